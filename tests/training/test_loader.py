"""SparseKDLoader: order, partition, resume, DataLoader workers, alignment, against real servers."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from logitcache.client import CacheClient, FailedPreconditionError, UnavailableError
from logitcache.core import records
from logitcache.core.manifest import ShardManifest, TeacherRun
from logitcache.kd import KDParams, sparse_kd_loss
from logitcache.server.runner import ServerThread
from logitcache.targets.sampling import sample_random
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.training import (
    AlignmentError,
    LoaderStateError,
    ShardSetError,
    SparseKDBatch,
    SparseKDLoader,
    plan_batches,
    verify_alignment,
)
from logitcache.training.loader import worker_share
from tests.server.helpers import MANIFEST, SEQ_LEN, TOPK_MANIFEST, VOCAB, make_records, running_server

# ----------------------------------------------------------------- the plan (pure)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 300),
    batch_size=st.integers(1, 9),
    world_size=st.integers(1, 8),
    num_workers=st.integers(0, 3),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
    shuffle=st.booleans(),
)
def test_every_item_is_yielded_exactly_once_per_epoch(
    n: int, batch_size: int, world_size: int, num_workers: int, seed: int, epoch: int, shuffle: bool
) -> None:
    seen: list[int] = []
    per_rank = []
    for rank in range(world_size):
        plan = plan_batches(
            n, batch_size=batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size, shuffle=shuffle
        )
        per_rank.append(len(plan))
        assert all(1 <= len(b) <= batch_size for b in plan)
        for worker in range(max(num_workers, 1)):
            for index in worker_share(len(plan), 0, worker, max(num_workers, 1)):
                seen.extend(plan[index].tolist())
    assert sorted(seen) == list(range(n))
    assert max(per_rank) - min(per_rank) <= 1  # ranks differ by one (last, smaller) batch at most


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 300), batch_size=st.integers(1, 9), world_size=st.integers(1, 8), seed=st.integers(0, 99))
def test_drop_last_gives_every_rank_the_same_full_batches(n: int, batch_size: int, world_size: int, seed: int) -> None:
    plans = [
        plan_batches(n, batch_size=batch_size, seed=seed, epoch=0, rank=r, world_size=world_size, drop_last=True)
        for r in range(world_size)
    ]
    assert len({len(p) for p in plans}) == 1
    assert all(len(b) == batch_size for p in plans for b in p)
    seen = np.concatenate([b for p in plans for b in p]) if plans[0] else np.zeros(0)
    assert len(set(seen.tolist())) == len(seen) == (n // (batch_size * world_size)) * batch_size * world_size


def test_the_order_is_a_function_of_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        order: list[int] = np.concatenate(plan_batches(100, batch_size=10, seed=seed, epoch=epoch)).tolist()
        return order

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(3, 7)) == list(range(100))
    unshuffled = np.concatenate(plan_batches(10, batch_size=3, seed=0, epoch=4, shuffle=False)).tolist()
    assert unshuffled == list(range(10))


def test_worker_share_interleaves_from_the_resume_point() -> None:
    assert [list(worker_share(10, 3, w, 3)) for w in range(3)] == [[3, 6, 9], [4, 7], [5, 8]]


# ----------------------------------------------------------------- against a server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]]]:
    """Shard 0 holds seqs 0..29, shard 5 holds seqs 100..112 (some missing)."""
    with running_server(tmp_path) as (server, client):
        stored: dict[tuple[int, int], bytes] = {}
        for shard, items in ((0, make_records(30, seed=1)), (5, make_records(13, seed=2, start=100))):
            client.create_shard(shard, MANIFEST)
            items = [(seq, data) for seq, data in items if seq not in (104, 109)]
            client.write(shard, items)
            client.seal_shard(shard)  # complete: loaders refuse unsealed shards by default
            stored.update({(shard, seq): data for seq, data in items})
        yield server, client, stored


def _keys(batches: list[SparseKDBatch]) -> list[tuple[int, int]]:
    return [(int(s), int(q)) for b in batches for s, q in zip(b.shards, b.seqs, strict=True)]


def test_batches_hold_the_records_targets_padded(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, stored = served
    loader = SparseKDLoader(client, [0, 5], batch_size=4, seed=3)
    batches = list(loader)
    assert sorted(_keys(batches)) == sorted(stored)
    assert len(batches) == len(loader) == 11
    for batch in batches:
        k = batch.target_ids.shape[2]
        widest = 0
        for row, key in enumerate(zip(batch.shards.tolist(), batch.seqs.tolist(), strict=True)):
            record = records.decode(stored[key])
            targets = SparseTargets.from_record(record)
            ids, probs = targets.to_padded(width=k)
            widest = max(widest, int(targets.entry_counts().max()))
            assert torch.equal(batch.input_ids[row], torch.from_numpy(record.input_ids))
            assert torch.equal(batch.labels[row, :-1], batch.input_ids[row, 1:])
            assert int(batch.labels[row, -1]) == -100
            assert torch.equal(batch.target_ids[row], ids)
            torch.testing.assert_close(batch.target_probs[row], probs)
            assert batch.input_hashes[row] == record.header.input_hash
        assert widest == k  # K is the batch's widest position
    torch.testing.assert_close(batches[0].target_probs.sum(-1), torch.ones(4, SEQ_LEN))


@pytest.mark.parametrize("normalize", [True, False])
def test_device_decode_gives_the_same_batches(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]], normalize: bool
) -> None:
    """``device_decode`` unpacks the records with decode_torch (here on the CPU; on the GPU in
    tests/training/test_cuda_loader.py): the batches are exactly the host decoder's."""
    _, client, _ = served
    host = list(SparseKDLoader(client, [0, 5], batch_size=4, seed=3, normalize=normalize))
    torch_side = list(
        SparseKDLoader(client, [0, 5], batch_size=4, seed=3, normalize=normalize, device="cpu", device_decode=True)
    )
    assert len(host) == len(torch_side) == 11
    for a, b in zip(host, torch_side, strict=True):
        for name, tensor in a._tensors().items():
            assert torch.equal(tensor, getattr(b, name)), name
        assert a.input_hashes == b.input_hashes
    with pytest.raises(ValueError, match="device_decode: expected a device"):
        SparseKDLoader(client, [0], batch_size=4, device_decode=True)


def test_a_batch_feeds_sparse_kd_loss(served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]]) -> None:
    _, client, _ = served
    batch = next(iter(SparseKDLoader(client, [0], batch_size=2)))
    logits = torch.randn(2, SEQ_LEN, VOCAB, requires_grad=True)
    k = batch.target_ids.shape[-1]
    loss = sparse_kd_loss(
        logits.flatten(0, 1),
        batch.target_ids.reshape(-1, k),
        batch.target_probs.reshape(-1, k),
        labels=batch.labels.flatten(),
    )
    loss.backward()
    assert loss.item() > 0
    assert logits.grad is not None
    assert float(logits.grad[:, -1].abs().sum()) == 0  # the last position has no label: ignored


def test_ranks_and_workers_partition_a_real_epoch(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, stored = served
    seen: list[tuple[int, int]] = []
    for rank in range(3):
        loader = SparseKDLoader(client, [0, 5], batch_size=2, seed=1, epoch=2, rank=rank, world_size=3)
        direct = list(loader)
        via_workers = list(DataLoader(loader, batch_size=None, num_workers=2))
        assert _keys(via_workers) == _keys(direct)  # same batches, same order
        assert [b.batch_index for b in via_workers] == list(range(len(loader)))
        seen += _keys(direct)
    assert sorted(seen) == sorted(stored)
    assert len(seen) == len(set(seen))


def _mapping_of(tensor: torch.Tensor) -> str:
    """The name of what backs ``tensor``'s memory in this process (/proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *_, name = line.split(maxsplit=5) if len(line.split()) > 5 else [*line.split(), ""]
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return name
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_worker_batches_come_in_reused_shared_memory_and_equal_the_in_process_ones(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    """43 batches from one DataLoader worker, each dropped before the next: they arrive as views of a
    few shared-memory segments the worker reuses (not one new segment each), with the same content
    as the loader's own batches; batches the caller keeps are never overwritten."""
    _, client, _ = served
    loader = SparseKDLoader(client, [0, 5], batch_size=1, seed=3, prefetch=1)
    direct = list(loader)
    segments, kept = [], []
    for i, batch in enumerate(DataLoader(loader, batch_size=None, num_workers=1)):
        segments.append(_mapping_of(batch.target_ids))
        for name in ("input_ids", "labels", "target_ids", "target_probs", "attention_mask"):
            assert torch.equal(batch[name], direct[i][name]), (i, name)
        if i % 10 == 0:
            kept.append((i, batch))
        del batch
    assert len(segments) == len(direct) == 41
    assert all("/dev/shm/" in name or "memfd:" in name for name in segments), set(segments)
    assert len(set(segments)) <= 1 + 8 + len(kept) < len(segments)  # the pool: prefetch + 8 slabs
    for i, batch in kept:
        assert torch.equal(batch.target_ids, direct[i].target_ids), i


def test_epochs_shuffle_differently_and_deterministically(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, _ = served
    loader = SparseKDLoader(client, [0, 5], batch_size=5, seed=9)
    first = _keys(list(loader))
    loader.set_epoch(1)
    second = _keys(list(loader))
    loader.set_epoch(0)
    assert _keys(list(loader)) == first
    assert second != first
    assert sorted(second) == sorted(first)


def test_resume_after_k_batches_yields_exactly_the_rest(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, _ = served
    full = _keys(list(SparseKDLoader(client, [0, 5], batch_size=3, seed=4, epoch=1, prefetch=2)))
    loader = SparseKDLoader(client, [0, 5], batch_size=3, seed=4, epoch=1, prefetch=2)
    taken = []
    for batch in loader:
        taken.append(batch)
        if len(taken) == 5:
            break  # the prefetch thread read ahead; the state counts only what was consumed
    state = loader.state_dict()
    assert (state["epoch"], state["batches_done"]) == (1, 5)
    resumed = SparseKDLoader(client, [0, 5], batch_size=3, seed=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the usual loop calls set_epoch for the resumed epoch: it keeps the resume point
    assert _keys(taken) + _keys(list(resumed)) == full
    resumed.set_epoch(2)
    assert len(list(resumed)) == len(resumed)  # a new epoch starts from its first batch
    resumed.load_state_dict(loader.state_dict(batches_done=3))  # as a DataLoader-worker caller would
    assert _keys(list(resumed)) == full[9:]


def test_a_state_from_another_loader_is_refused(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, _ = served
    state = SparseKDLoader(client, [0, 5], batch_size=3, seed=4).state_dict()
    with pytest.raises(LoaderStateError, match="seed"):
        SparseKDLoader(client, [0, 5], batch_size=3, seed=5).load_state_dict(state)
    with pytest.raises(LoaderStateError, match="shards"):
        SparseKDLoader(client, [0], batch_size=3, seed=4).load_state_dict(state)
    with pytest.raises(LoaderStateError, match="batch_size"):
        SparseKDLoader(client, [0, 5], batch_size=4, seed=4).load_state_dict(state)
    with pytest.raises(LoaderStateError, match="batches_done"):
        SparseKDLoader(client, [0, 5], batch_size=3, seed=4).load_state_dict({**state, "batches_done": 99})
    client.create_shard(7, MANIFEST)  # an unsealed shard, still being written
    client.write(7, make_records(4, seed=3, start=200))
    with pytest.warns(UserWarning, match="not sealed"):
        state = SparseKDLoader(client, [0, 7], batch_size=3, seed=4, allow_unsealed=True).state_dict()
    client.write(7, make_records(1, seed=3, start=204))  # the shard's seqs changed since
    with pytest.raises(LoaderStateError, match="seqs changed"), pytest.warns(UserWarning, match="not sealed"):
        SparseKDLoader(client, [0, 7], batch_size=3, seed=4, allow_unsealed=True).load_state_dict(state)


def test_verify_alignment(served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]]) -> None:
    _, client, _ = served
    batch = next(iter(SparseKDLoader(client, [5], batch_size=3, shuffle=False)))
    verify_alignment(batch.input_ids.clone(), batch)  # the record's own ids pass
    shifted = batch.input_ids.clone()
    shifted[1, 7] = (shifted[1, 7] + 1) % VOCAB
    with pytest.raises(AlignmentError, match=r"shard 5 seq 101: .*position 7"):
        verify_alignment(shifted, batch)
    with pytest.raises(AlignmentError, match="positions"):
        verify_alignment(batch.input_ids[:, :-1], batch)


def test_records_of_different_lengths_are_padded_and_masked(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, ShardManifest(vocab_size=VOCAB, method="sampled", rounds=20))
        lengths = {0: 5, 1: 9}
        for seq, t in lengths.items():
            data = records.encode(
                torch.randint(0, VOCAB, (t,), generator=gen),
                sample_random(lm_like_logits(t, VOCAB, generator=gen), 20, generator=gen),
            )
            client.write(0, [(seq, data)])
        client.seal_shard(0)
        batch = next(iter(SparseKDLoader(client, [0], batch_size=2, shuffle=False)))
        assert batch.input_ids.shape == (2, 9)
        assert batch.attention_mask.sum(1).tolist() == [5, 9]
        assert (batch.labels[0, 4:] == -100).all()
        assert (batch.target_ids[0, 5:] == -1).all()
        assert batch.num_positions == 14


# A fixed teacher with a head and a thin tail, sampled with a tempered proposal at few rounds: the
# normalised target's O(1/N) bias is then many standard errors wide, so the test can tell them apart.
_TEACHER = torch.tensor([0.40, 0.20, 0.12, 0.08, 0.06, 0.05, 0.04, 0.02, 0.015, 0.005], dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.8, 1.25])
def test_normalize_false_hands_out_the_exactly_unbiased_target(tmp_path: Path, temperature: float) -> None:
    rounds, seqs, seq_len = 4, 100, 200  # 20 000 positions of the same teacher
    vocab = _TEACHER.numel()
    gen = torch.Generator().manual_seed(5)
    logits = _TEACHER.log().float().expand(seq_len, -1).contiguous()
    manifest = ShardManifest(vocab_size=vocab, method="sampled", rounds=rounds, temperature=temperature)
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, manifest)
        for seq in range(seqs):
            targets = sample_random(logits, rounds, temperature=temperature, generator=gen)
            client.write(0, [(seq, records.encode(torch.zeros(seq_len, dtype=torch.int64), targets))])
        client.seal_shard(0)

        def targets_of(normalize: bool) -> torch.Tensor:
            """Every position's dense target ``[positions, V]``, as the loader hands it out."""
            rows = []
            for batch in SparseKDLoader(client, [0], batch_size=25, normalize=normalize):
                ids, probs = batch.target_ids.flatten(0, 1), batch.target_probs.flatten(0, 1).double()
                dense = torch.zeros(ids.shape[0], vocab, dtype=torch.float64)
                rows.append(dense.scatter_add_(1, ids.clamp_min(0), torch.where(ids >= 0, probs, 0.0)))
            return torch.cat(rows)

        unbiased, normalised = targets_of(False), targets_of(True)
    for dense in (unbiased, normalised):
        assert dense.shape == (seqs * seq_len, vocab)
    z = (unbiased.mean(0) - _TEACHER) / (unbiased.var(0) / unbiased.shape[0]).sqrt()
    assert z.abs().max() < 5, z  # E[count·w / N] = p, to within the sampler's own noise
    assert (unbiased.sum(1) - 1).abs().max() > 0.05  # ... though single rows do not sum to 1
    z = (normalised.mean(0) - _TEACHER) / (normalised.var(0) / normalised.shape[0]).sqrt()
    assert z.abs().max() > 8, z  # the self-normalised target's bias at N = 4 stands out of that noise
    torch.testing.assert_close(normalised.sum(1), torch.ones(seqs * seq_len, dtype=torch.float64))


def test_an_error_in_the_prefetch_thread_reaches_the_loop(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(40, seed=1))
        client.seal_shard(0)
        loader = SparseKDLoader(client, [0], batch_size=1, prefetch=1, read_ahead=1)
        client.retries = 1
        it = iter(loader)
        next(it)
        server.stop(0)
        with pytest.raises(UnavailableError):
            collections.deque(it, maxlen=0)


def test_bad_arguments(served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]]) -> None:
    _, client, _ = served
    with pytest.raises(ValueError, match="distinct"):
        SparseKDLoader(client, [0, 0], batch_size=2)
    with pytest.raises(ValueError, match="rank"):
        SparseKDLoader(client, [0], batch_size=2, rank=3, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        SparseKDLoader(client, [0], batch_size=0)


def test_rank_comes_from_torchrun_variables(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client, _ = served
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    loader = SparseKDLoader(client, [0], batch_size=2)
    assert (loader.rank, loader.world_size) == (2, 4)


# ----------------------------------------------------------------- safety: what the loader refuses


def _run(start: int, stop: int, corpus: str = "xxh64:corpus") -> TeacherRun:
    return TeacherRun(
        corpus_fingerprint=corpus, sequences=64, world_size=2, rank=0, seq_start=start, seq_stop=stop, seed=0
    )


def _sealed_shard(client: CacheClient, shard: int, manifest: ShardManifest, items: list[tuple[int, bytes]]) -> None:
    client.create_shard(shard, manifest)
    client.write(shard, items)
    client.seal_shard(shard)


def test_the_loader_exposes_the_manifest(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, _ = served
    loader = SparseKDLoader(client, [0, 5], batch_size=4)
    assert loader.manifest == MANIFEST
    assert loader.vocab_size == VOCAB
    assert loader.manifests == {0: MANIFEST, 5: MANIFEST}
    batch = next(iter(loader))
    assert "labels" in batch
    assert "teacher" not in batch
    assert batch["input_ids"] is batch.input_ids
    assert set(batch.to_dict()) == set(batch.keys())
    assert "target_probs" in batch


def test_shards_of_different_manifests_are_refused_unless_allowed(tmp_path: Path) -> None:
    topk_64 = dataclasses.replace(TOPK_MANIFEST, seq_len=64)  # the case: top-k 12, T = 64 into sampled, T = 32
    with running_server(tmp_path) as (_, client):
        _sealed_shard(client, 0, MANIFEST, make_records(4))
        client.create_shard(1, topk_64)
        client.seal_shard(1)
        with pytest.raises(ShardSetError, match="shards 0 and 1 hold different targets") as refused:
            SparseKDLoader(client, [0, 1], batch_size=2)
        assert "method: 'sampled' (shard 0) vs 'topk' (shard 1)" in str(refused.value)
        assert "seq_len: 32 (shard 0) vs 64 (shard 1)" in str(refused.value)
        mixed = SparseKDLoader(client, [0, 1], batch_size=2, allow_mixed=True)
        assert mixed.manifest is None
        assert mixed.manifests[1] == topk_64


def test_unsealed_shards_are_refused_unless_allowed_with_a_warning(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(4))  # still being written
        with pytest.raises(ShardSetError, match=r"shards \[0\] are not sealed"):
            SparseKDLoader(client, [0], batch_size=2)
        with pytest.warns(UserWarning, match="not sealed"):
            loader = SparseKDLoader(client, [0], batch_size=2, allow_unsealed=True)
        assert loader.num_items == 4


def test_a_seq_stored_in_two_shards_of_one_corpus_is_refused(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        _sealed_shard(client, 10, dataclasses.replace(MANIFEST, run=_run(0, 32)), make_records(32))
        _sealed_shard(client, 11, dataclasses.replace(MANIFEST, run=_run(32, 64)), make_records(32, start=32))
        assert SparseKDLoader(client, [10, 11], batch_size=4).num_items == 64
        # a second run over the same corpus split differently: seqs 0..63 again
        again = TeacherRun(corpus_fingerprint="xxh64:corpus", sequences=64, world_size=1, rank=0, seq_start=0,
                           seq_stop=64, seed=0)  # fmt: skip
        _sealed_shard(client, 12, dataclasses.replace(MANIFEST, run=again), make_records(64))
        with pytest.raises(ShardSetError, match="shards 10 and 12 both hold seq 0") as refused:
            SparseKDLoader(client, [10, 11, 12], batch_size=4)
        assert "32 seqs in all" in str(refused.value)
        assert SparseKDLoader(client, [10, 11, 12], batch_size=4, allow_duplicates=True).num_items == 128
        # another corpus may reuse the seq ids: not a duplicate
        _sealed_shard(client, 13, dataclasses.replace(MANIFEST, run=_run(0, 32, "xxh64:other")), make_records(32))
        assert SparseKDLoader(client, [10, 11, 13], batch_size=4).num_items == 96


def test_the_server_refuses_a_seq_outside_the_runs_slice(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, dataclasses.replace(MANIFEST, run=_run(0, 32)))
        with pytest.raises(FailedPreconditionError, match=r"seqs \[0, 32\), not 32"):
            client.write(0, make_records(2, start=31))
        assert client.get_shard(0).sequences == 0  # the whole batch refused


def test_a_student_vocabulary_padded_past_the_teachers_gets_zero_target_mass(
    served: tuple[ServerThread, CacheClient, dict[tuple[int, int], bytes]],
) -> None:
    _, client, _ = served
    loader = SparseKDLoader(client, [0], batch_size=4, shuffle=False)
    padded = VOCAB + 72  # the teacher's vocabulary rounded up to a multiple of 64 (3072)
    loader.check_student(vocab_size=padded)
    with pytest.raises(ShardSetError, match=r"student's vocabulary \(2999\) is smaller than the teacher's \(3000\)"):
        loader.check_student(vocab_size=VOCAB - 1)
    batch = next(iter(loader))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch.target_ids.shape[0] * batch.target_ids.shape[1], padded, generator=gen)
    logits.requires_grad_(True)
    ids, probs = batch.target_ids.flatten(0, 1), batch.target_probs.flatten(0, 1)
    sparse_kd_loss(logits, ids, probs, params=KDParams(reduction="sum")).backward()
    # the reference: dense targets over the padded vocabulary, zero past the teacher's V
    dense = torch.zeros(ids.shape[0], padded).scatter_add_(1, ids.clamp_min(0), torch.where(ids >= 0, probs, 0.0))
    assert dense[:, VOCAB:].sum() == 0
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), 1) * dense.sum(1, keepdim=True) - dense)


def test_a_student_tokenizer_other_than_the_teachers_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from logitcache.apps.corpus import tokenizer_fingerprint

    teacher_tok = Tokenizer(WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    student_tok = Tokenizer(WordLevel({"a": 0, "c": 1, "[UNK]": 2}, unk_token="[UNK]"))
    manifest = dataclasses.replace(MANIFEST, tokenizer_fingerprint=tokenizer_fingerprint(teacher_tok))
    with running_server(tmp_path) as (_, client):
        _sealed_shard(client, 0, manifest, make_records(2))
        loader = SparseKDLoader(client, [0], batch_size=2)
        loader.check_student(tokenizer=teacher_tok)
        with pytest.raises(ShardSetError, match="tokenizer_fingerprint: shard 0 was cached with tokenizer"):
            loader.check_student(tokenizer=student_tok)
