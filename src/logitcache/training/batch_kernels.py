"""The compiled kernels behind :func:`logitcache.training.batch_decode.decode_batch` (numba, no GIL).

They read a table with one row per record (the columns below) over one buffer holding the
records back to back, and check each record as :func:`logitcache.core.records.decode` does (see
:mod:`logitcache.training.batch_decode`). Untyped for mypy: numba types them when they compile;
the tests pin them to the numpy reference.
"""

import numba
import numpy as np

__all__ = ["COLUMNS", "decode_rows", "max_count"]

# columns of the per-record table: where its body starts in the buffer, T, E, the section widths
# (input id, count, entry bytes), id and value bits, 1 for top-k, N, N or k, V, and where its
# weights start in the weights array (-1: none)
_START, _T, _E, _IB, _CB, _EB, _ID_BITS, _VALUE_BITS, _TOPK, _ROUNDS, _PER, _V, _WEIGHTS = range(13)
COLUMNS = 13
_UNIQUE_SCAN = 64  # top-k: up to this many entries a position's ids are checked pairwise, past it sorted


@numba.njit(inline="always")
def _le(buffer, at, width):
    """The ``width``-byte little-endian unsigned integer at ``buffer[at:]`` (the usual widths unrolled)."""
    if width == 1:
        return np.uint64(buffer[at])
    if width == 2:
        return np.uint64(buffer[at]) | np.uint64(buffer[at + 1]) << np.uint64(8)
    if width == 3:
        return (
            np.uint64(buffer[at])
            | np.uint64(buffer[at + 1]) << np.uint64(8)
            | np.uint64(buffer[at + 2]) << np.uint64(16)
        )
    value = np.uint64(0)
    for i in range(width):
        value |= np.uint64(buffer[at + i]) << np.uint64(8 * i)
    return value


@numba.njit(cache=True, nogil=True)
def max_count(buffer, table):
    most = np.int64(1)
    for r in range(table.shape[0]):
        counts_at = table[r, _START] + table[r, _T] * table[r, _IB]
        width = table[r, _CB]
        for p in range(table[r, _T]):
            c = np.int64(_le(buffer, counts_at + p * width, width))
            if c > most:
                most = c
    return most


@numba.njit(cache=True, nogil=True)
def decode_rows(
    buffer,
    weights,
    table,
    rows,
    input_ids,
    labels,
    mask,
    target_ids,
    target_probs,
    ignore_index,
    normalize,
):
    """Fill the given rows; the first row whose record is refused, else -1 (see the module docstring).

    The target tensors are written through flat views, each slot once: a position's entries, then
    its unused slots (and a short record's missing positions) by slice fills.
    """
    t_out = input_ids.shape[1]
    k_out = target_ids.shape[2]
    flat_ids = target_ids.reshape(-1)
    flat_probs = target_probs.reshape(-1)
    log2 = np.log(2.0)
    for row in rows:
        start = table[row, _START]
        t = table[row, _T]
        total_entries = table[row, _E]
        ib = table[row, _IB]
        cb = table[row, _CB]
        eb = table[row, _EB]
        topk = table[row, _TOPK] == 1
        rounds = table[row, _ROUNDS]
        per = table[row, _PER]
        vocab = table[row, _V]
        weights_at = table[row, _WEIGHTS]
        id_shift = np.uint64(table[row, _ID_BITS])
        id_mask = (np.uint64(1) << id_shift) - np.uint64(1)
        levels = np.int64(1) << table[row, _VALUE_BITS]
        level_scale = table[row, _VALUE_BITS] * log2
        counts_at = start + t * ib
        entries_at = counts_at + t * cb
        n_rounds = np.float32(rounds)
        shares = np.arange(max(rounds, 0) + 1).astype(np.float32) / n_rounds  # count / N, as records.decode
        ids_row = input_ids[row]
        labels_row = labels[row]
        mask_row = mask[row]
        e = 0
        for p in range(t):
            token = np.int64(_le(buffer, start + p * ib, ib))
            if token >= vocab:
                return row
            ids_row[p] = token
            mask_row[p] = True
            if p > 0:
                labels_row[p - 1] = token
            c = np.int64(_le(buffer, counts_at + p * cb, cb))
            if c < 1 or c > per or c > k_out or e + c > total_entries:
                return row
            base = (row * t_out + p) * k_out
            at = entries_at + e * eb
            if topk:
                running = 0.0
                for j in range(c):
                    v = _le(buffer, at, eb)
                    at += eb
                    tok = np.int64(v & id_mask)
                    level = np.int64(v >> id_shift)
                    if tok >= vocab or level >= levels:
                        return row
                    running += np.log(np.float64(level + 1)) - level_scale
                    flat_ids[base + j] = tok
                    flat_probs[base + j] = np.float32(np.exp(running))
                if c <= _UNIQUE_SCAN:
                    for i in range(c):
                        for j in range(i + 1, c):
                            if flat_ids[base + i] == flat_ids[base + j]:
                                return row
                else:
                    ordered = np.sort(flat_ids[base : base + c])
                    for j in range(1, c):
                        if ordered[j] == ordered[j - 1]:
                            return row
            else:
                drawn = 0
                previous = -1
                mass = np.float32(0.0)
                for j in range(c):
                    v = _le(buffer, at, eb)
                    at += eb
                    tok = np.int64(v & id_mask)
                    count = np.int64(v >> id_shift)
                    if tok >= vocab or tok <= previous or count < 1 or count > rounds:
                        return row
                    previous = tok
                    drawn += count
                    flat_ids[base + j] = tok
                    if weights_at < 0:
                        flat_probs[base + j] = shares[count]
                    else:
                        w = weights[weights_at + e + j]
                        if not (np.isfinite(w) and w >= 0):
                            return row
                        prob = np.float32(count) * w
                        mass += prob
                        flat_probs[base + j] = prob if normalize else prob / n_rounds
                if drawn != rounds:
                    return row
                if weights_at >= 0 and normalize:
                    scale = mass if mass > 0 else np.float32(1.0)
                    for j in range(c):
                        flat_probs[base + j] = flat_probs[base + j] / scale
            flat_ids[base + c : base + k_out] = -1
            flat_probs[base + c : base + k_out] = 0.0
            e += c
        if e != total_entries:
            return row
        labels_row[t - 1] = ignore_index
        ids_row[t:] = 0
        labels_row[t:] = ignore_index
        mask_row[t:] = False
        flat_ids[(row * t_out + t) * k_out : (row + 1) * t_out * k_out] = -1
        flat_probs[(row * t_out + t) * k_out : (row + 1) * t_out * k_out] = 0.0
    return -1
