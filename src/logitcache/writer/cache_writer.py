"""The teacher-side writer: sample on the logits' device, pack records, send them in the background.

::

    with CacheWriter("127.0.0.1:50051", shard=0, sampler=SamplerConfig(rounds=50)) as writer:
        for seq_ids, input_ids, batch in corpus:               # input_ids [B, T]
            logits = teacher(input_ids).logits                  # [B, T, V] on the GPU
            writer.write(seq_ids, input_ids, logits)            # returns at once
    # leaving the block flushed: every record is durably acknowledged

``write`` samples on the logits' device (the only work it does on the caller's thread) and, on
CUDA, starts non-blocking copies of the small sampled tensors into pinned host memory; it never
waits for the GPU. A packer thread waits for those copies, packs one record per sequence and
groups them into batches; a sender thread keeps one ``Write`` stream open and pipelines the
batches. Memory is bounded: ``write`` blocks while ``max_pending_writes`` calls wait to be packed,
and the packer blocks while ``max_inflight_batches`` batches wait for their acknowledgement.

Failures: UNAVAILABLE, DEADLINE_EXCEEDED and a stream cancelled by the ack watchdog are transient:
the sender reopens the stream with backoff and resends every unacknowledged batch (the server
stores identical bytes once, so resends are exact) for up to ``retry_timeout`` seconds without
progress. Anything else (a refused record, a conflict, a sealed shard, a full disk) is permanent:
it is raised by the next ``write``, ``flush`` or ``close``, and nothing more is sent.

Seeding: with ``seed``, the random draws of seq ``s`` use a generator seeded with
:func:`sequence_seed` ``(seed, shard, s)`` and nothing else, so a record's bytes depend only on
its logits and those three numbers: a resumed run stores exactly what an uninterrupted one would,
whatever the batches. Without ``seed`` the draws come from torch's default generator.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import torch
import xxhash
from torch import Tensor

from logitcache.client import BatchAck, CacheClient, CacheError, CancelledError, WriteStream
from logitcache.client.errors import is_transient
from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest, TeacherRun
from logitcache.targets.sampling import sample
from logitcache.targets.sparse import SparseTargets

__all__ = ["CacheWriter", "WriterClosedError", "WriterStats", "sequence_seed"]

log = logging.getLogger(__name__)

_POLL = 0.05  # seconds between checks of the stop conditions in the background threads
_BATCH_BYTES = 1 << 20  # about this many record bytes per Write message
# CANCELLED: the ack watchdog cancelled the stream, or the server is shutting down


def sequence_seed(seed: int, shard: int, seq: int) -> int:
    """The generator seed for seq ``seq`` of shard ``shard`` in a run seeded with ``seed`` (63 bits)."""
    return xxhash.xxh64_intdigest(struct.pack("<QQQ", seed & (2**64 - 1), shard, seq)) >> 1


def _retryable(exc: CacheError) -> bool:
    """A dropped stream, or a condition that passes (the server's pushback): resend after a pause."""
    return is_transient(exc) or isinstance(exc, CancelledError)


class WriterClosedError(RuntimeError):
    """``write`` after ``close``."""


@dataclass(frozen=True)
class WriterStats:
    """A snapshot of what a :class:`CacheWriter` did so far."""

    records_written: int  # acknowledged as newly stored
    records_unchanged: int  # acknowledged as already stored with identical bytes (resends, reruns)
    positions_acked: int
    bytes_acked: int
    pending_records: int  # handed to write() and not acknowledged yet
    seconds: float  # since the writer started
    seconds_in_write: float  # time write() took on the caller's thread (sampling included)
    retries: int  # streams reopened after a transient failure
    blocked_writes: int  # write() calls waiting on backpressure right now (the queue is full)
    seconds_blocked: float  # time write() spent waiting on backpressure, in total

    @property
    def positions_per_s(self) -> float:
        return self.positions_acked / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_position(self) -> float:
        return self.bytes_acked / self.positions_acked if self.positions_acked else 0.0


@dataclass
class _Work:
    """One write() call, sampled, on its way to the host."""

    seq_ids: list[int]
    input_ids: Tensor  # [B, T] on the host
    targets: SparseTargets  # B·T positions, on the host once ``ready`` fired
    ready: list[torch.cuda.Event]  # fire once the device → host copies finished


@dataclass
class _Batch:
    records: list[tuple[int, bytes]]
    positions: int
    nbytes: int
    sent_at: float = 0.0


class CacheWriter:
    """Samples teacher logits, packs records and streams them to a cache server in the background.

    ``target`` is an address, a list of addresses (a cluster) or a :class:`CacheClient` (not closed
    by the writer). The shard is created if it does not exist (``exist_ok``: an existing shard must
    have an equal manifest, else :class:`~logitcache.client.FailedPreconditionError`). Its manifest
    comes from ``sampler`` and ``vocab_size`` (default: the logits' last dimension at the first
    ``write``), ``seq_len``, ``teacher`` and ``tokenizer_fingerprint``.
    """

    def __init__(
        self,
        target: str | Sequence[str] | CacheClient,
        shard: int,
        sampler: SamplerConfig | None = None,
        *,
        vocab_size: int | None = None,
        seq_len: int = 0,
        teacher: str = "",
        tokenizer_fingerprint: str = "",
        run: TeacherRun | None = None,
        seed: int | None = None,
        overwrite: bool = False,
        dense: bool = False,
        topk_value_bits: int | None = None,
        batch_records: int = 16,
        max_pending_writes: int = 8,
        max_inflight_batches: int = 16,
        retry_timeout: float = 300.0,
        ack_timeout: float = 120.0,
        auth_token: str | None = None,
    ) -> None:
        for name, value in (
            ("batch_records", batch_records),
            ("max_pending_writes", max_pending_writes),
            ("max_inflight_batches", max_inflight_batches),
        ):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        self._own_client = not isinstance(target, CacheClient)
        self.client = target if isinstance(target, CacheClient) else CacheClient(target, auth_token=auth_token)
        self.shard = shard
        self.sampler = sampler or SamplerConfig()
        self.manifest: ShardManifest | None = None
        self._manifest_for = functools.partial(  # the shard's manifest, once the vocabulary is known
            ShardManifest.for_sampler,
            self.sampler,
            seq_len=seq_len,
            teacher=teacher,
            tokenizer_fingerprint=tokenizer_fingerprint,
            run=run,
        )
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.overwrite = overwrite
        self.dense = dense
        self.topk_value_bits = topk_value_bits
        self.batch_records = batch_records
        self.max_inflight_batches = max_inflight_batches
        self.retry_timeout = retry_timeout
        self.ack_timeout = ack_timeout

        self._work: queue.Queue[_Work] = queue.Queue(maxsize=max_pending_writes)
        self._cond = threading.Condition()
        self._ready: collections.deque[_Batch] = collections.deque()  # packed, not sent
        self._inflight: collections.deque[_Batch] = collections.deque()  # sent, not acknowledged
        self._generation = 0  # bumped whenever a new Write stream starts
        self._call: WriteStream | None = None  # the current stream, for the watchdog to cancel
        self._error: BaseException | None = None
        self._closing = False
        self._closed = False
        self._packer_done = False
        self._pending_records = 0
        self._written = self._unchanged = self._positions = self._bytes = self._retries = 0
        self._seconds_in_write = self._seconds_blocked = 0.0
        self._blocked_writes = 0
        self._started = time.perf_counter()
        self._threads_started = False
        self._packer = threading.Thread(target=self._pack_loop, name=f"logitcache-pack-{shard}", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name=f"logitcache-send-{shard}", daemon=True)
        if vocab_size is not None:
            self._create_shard(vocab_size)

    # ----------------------------------------------------------------- caller side

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # the caller is already failing: stop without waiting on the server, keep its exception
            self._shutdown(wait=False)

    def _create_shard(self, vocab_size: int) -> None:
        """Create (or find) the shard; a transient refusal is retried within ``retry_timeout``."""
        manifest = self._manifest_for(vocab_size)
        deadline = time.monotonic() + self.retry_timeout
        while True:
            try:
                self.client.create_shard(self.shard, manifest, exist_ok=True)
                break
            except CacheError as exc:
                pause = max(1.0, exc.retry_after or 0.0)
                if not is_transient(exc) or time.monotonic() + pause > deadline:
                    raise
                log.warning("shard %d: creating it failed (%s); retrying in %.1f s", self.shard, exc, pause)
                time.sleep(pause)
        self.manifest = manifest

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed or self._closing:
            raise WriterClosedError(f"shard {self.shard}: the writer is closed")

    def write(self, seq_ids: Sequence[int] | Tensor, input_ids: Tensor, teacher_logits: Tensor) -> None:
        """Sample ``teacher_logits [B, T, V]`` and queue one record per sequence.

        ``seq_ids`` names the ``B`` sequences (distinct), ``input_ids [B, T]`` are the tokens the
        teacher saw (stored with the targets). Returns once sampling is queued on the logits'
        device; blocks only while ``max_pending_writes`` earlier calls wait to be packed.
        Raises ``ValueError`` on bad input (nothing queued) and the background's permanent error.
        """
        started = time.perf_counter()
        self._raise_if_failed()
        seqs = [int(s) for s in (seq_ids.tolist() if isinstance(seq_ids, Tensor) else seq_ids)]
        if not isinstance(teacher_logits, Tensor) or teacher_logits.dim() != 3:
            got = list(teacher_logits.shape) if isinstance(teacher_logits, Tensor) else type(teacher_logits).__name__
            raise ValueError(f"teacher_logits: expected a tensor of shape [B, T, V], got {got}")
        b, t, v = teacher_logits.shape
        if not isinstance(input_ids, Tensor) or tuple(input_ids.shape) != (b, t):
            got = list(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected shape [B={b}, T={t}] (as the logits), got {got}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
        if len(seqs) != b:
            raise ValueError(f"seq_ids: expected {b} ids (one per sequence), got {len(seqs)}")
        if len(set(seqs)) != b or any(not 0 <= s < 2**64 - 1 for s in seqs):
            raise ValueError(f"seq_ids: expected distinct ids in [0, 2**64 - 1), got {seqs}")
        if b == 0 or t == 0:
            raise ValueError(f"teacher_logits: expected at least one sequence and position, got {[b, t, v]}")
        if self.manifest is None:
            self._create_shard(v)
        assert self.manifest is not None
        if not self._threads_started:  # once the shard exists: a cluster client routes only to existing shards
            self._threads_started = True
            self._packer.start()
            self._sender.start()
        if v != self.manifest.vocab_size:
            raise ValueError(f"teacher_logits: expected V={self.manifest.vocab_size} (the shard's), got {v}")
        if self.manifest.seq_len and t != self.manifest.seq_len:
            raise ValueError(f"input_ids: expected T={self.manifest.seq_len} (the shard's seq_len), got {t}")
        events: list[torch.cuda.Event] = []
        if input_ids.device.type == "cpu":
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= v):
                raise ValueError(
                    f"input_ids: expected token ids in [0, V={v}), got {int(input_ids.min())}..{int(input_ids.max())}"
                )
            host_ids = input_ids.detach().clone()  # the caller may reuse its buffer
        else:  # range-checked by records.encode in the packer: no device sync here
            with torch.cuda.device(input_ids.device):
                host_ids = _pinned_copy(input_ids.detach())
                events.append(_recorded_event())
        targets = self._sample(seqs, teacher_logits.detach())
        if targets.device.type == "cuda":
            with torch.cuda.device(targets.device):
                targets = _to_pinned_host(targets)
                events.append(_recorded_event())
        with self._cond:
            self._pending_records += b
        try:
            self._put(_Work(seqs, host_ids, targets, events))
        except BaseException:  # the error, or an interrupt while blocked on backpressure: not queued
            with self._cond:
                self._pending_records -= b
            raise
        self._seconds_in_write += time.perf_counter() - started

    def _sample(self, seqs: list[int], logits: Tensor) -> SparseTargets:
        """Sparse targets of ``logits [B, T, V]``; with ``seed``, each sequence drawn from its own seed."""
        b, t, v = logits.shape
        if self.seed is None or self.sampler.method == "topk":  # top-k draws nothing
            return sample(logits.reshape(b * t, v), self.sampler)
        generator = self._generators.get(logits.device)
        if generator is None:
            generator = self._generators[logits.device] = torch.Generator(logits.device)
        parts = []
        for row, seq in enumerate(seqs):
            generator.manual_seed(sequence_seed(self.seed, self.shard, seq))
            parts.append(sample(logits[row], self.sampler, generator))
        return SparseTargets.cat(parts)

    def _put(self, work: _Work) -> None:
        try:
            self._work.put_nowait(work)
            return
        except queue.Full:
            pass
        blocked = time.perf_counter()
        with self._cond:
            self._blocked_writes += 1
        try:
            while True:
                if self._error is not None:
                    raise self._error from None
                try:
                    self._work.put(work, timeout=_POLL)
                    return
                except queue.Full:
                    continue
        finally:
            with self._cond:
                self._blocked_writes -= 1
                self._seconds_blocked += time.perf_counter() - blocked

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record handed to ``write`` is durably acknowledged (or raise the error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending_records and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"shard {self.shard}: {self._pending_records} records not acknowledged")
                self._cond.wait(_POLL if left is None else min(_POLL, left))
                self._watchdog_locked()  # the packer may be gone (closing): a hung server is noticed here
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Flush, end the stream and stop the threads. Raises the background's error, if any."""
        if self._closed:
            return
        try:
            if self._error is None:
                self.flush()
        except BaseException:  # an interrupt, a timeout: stop without waiting on the server
            self._shutdown(wait=False)
            raise
        self._shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def _shutdown(self, *, wait: bool) -> None:
        if not wait:
            self._fail(WriterClosedError(f"shard {self.shard}: aborted; unacknowledged records were not sent"))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in (self._packer, self._sender):
            if thread.is_alive():
                thread.join(timeout=None if wait else 1.0)
        if self._own_client:
            self.client.close()
        self._closed = True

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(
                records_written=self._written,
                records_unchanged=self._unchanged,
                positions_acked=self._positions,
                bytes_acked=self._bytes,
                pending_records=self._pending_records,
                seconds=time.perf_counter() - self._started,
                seconds_in_write=self._seconds_in_write,
                retries=self._retries,
                blocked_writes=self._blocked_writes,
                seconds_blocked=self._seconds_blocked,
            )

    # ----------------------------------------------------------------- packer thread

    def _pack_loop(self) -> None:
        try:
            while True:
                try:
                    work = self._work.get(timeout=_POLL)
                except queue.Empty:
                    self._watchdog()
                    if self._closing or self._error is not None:
                        return
                    continue
                batches = self._pack(work)
                with self._cond:
                    while len(self._ready) + len(self._inflight) >= self.max_inflight_batches and self._error is None:
                        self._cond.wait(_POLL)
                        self._watchdog_locked()
                    self._ready.extend(batches)
                    self._cond.notify_all()
        except BaseException as exc:  # a record that cannot be packed: permanent
            self._fail(exc)
        finally:
            with self._cond:
                self._packer_done = True
                self._cond.notify_all()

    def _pack(self, work: _Work) -> list[_Batch]:
        for event in work.ready:
            event.synchronize()
        targets = work.targets
        input_ids = work.input_ids.numpy()  # the ready event covers this copy too (same stream, earlier)
        t = input_ids.shape[1]
        batches: list[_Batch] = []
        current = _Batch([], 0, 0)
        for i, seq in enumerate(work.seq_ids):
            one = targets.positions(i * t, (i + 1) * t)
            data = records.encode(input_ids[i], one, dense=self.dense, topk_value_bits=self.topk_value_bits)
            if current.records and (
                len(current.records) == self.batch_records or current.nbytes + len(data) > _BATCH_BYTES
            ):
                batches.append(current)
                current = _Batch([], 0, 0)
            current.records.append((seq, data))
            current.positions += t
            current.nbytes += len(data)
        batches.append(current)
        return batches

    def _watchdog(self) -> None:
        with self._cond:
            self._watchdog_locked()

    def _watchdog_locked(self) -> None:
        """Cancel a stream whose oldest batch waits longer than ``ack_timeout`` (the sender retries)."""
        waited = time.monotonic() - self._inflight[0].sent_at if self._inflight else 0.0
        if self._call is not None and waited > self.ack_timeout:
            log.warning("shard %d: no acknowledgement for %.0f s, reopening the stream", self.shard, self.ack_timeout)
            self._call.cancel()
            self._call = None

    # ----------------------------------------------------------------- sender thread

    def _send_loop(self) -> None:
        failing_since: float | None = None
        backoff = 0.1
        while True:
            with self._cond:
                if self._error is not None:
                    return
                if self._drained():
                    return
                self._generation += 1
                generation = self._generation
            try:
                stream = self.client.write_batches(self.shard, self._requests(generation), overwrite=self.overwrite)
                with self._cond:
                    self._call = stream
                for ack in stream:
                    self._acked(ack)
                    failing_since, backoff = None, 0.1
            except CacheError as exc:
                if not _retryable(exc):  # permanent: refused, conflict, sealed, full shard, unauthenticated...
                    self._fail(exc)
                    return
                now = time.monotonic()
                with self._cond:
                    idle = not self._inflight and not self._ready
                # the budget runs while there is data to deliver, from the first failure since the last ack
                failing_since = None if idle else failing_since or now
                if failing_since is not None and now - failing_since > self.retry_timeout:
                    self._fail(exc)
                    return
                with self._cond:
                    if self._failed():  # cancelled by _fail or an abort
                        return
                    if idle:
                        log.debug("shard %d: idle stream ended (%s); reopening in %.1f s", self.shard, exc, backoff)
                    else:
                        log.warning(
                            "shard %d: %s; resending %d batch(es) in %.1f s",
                            self.shard,
                            exc,
                            len(self._inflight),
                            backoff,
                        )
                        self._retries += 1
                    until = time.monotonic() + max(backoff, exc.retry_after or 0.0)
                    while not self._failed() and not self._drained() and (left := until - time.monotonic()) > 0:
                        self._cond.wait(left)
                backoff = min(backoff * 2, 5.0)
            except BaseException as exc:  # not a CacheError: a bug or an interrupt
                self._fail(exc)
                return
            finally:
                with self._cond:
                    self._call = None

    def _drained(self) -> bool:
        """Closing, and everything handed to ``write`` is acknowledged (call with the lock held)."""
        return self._closing and self._packer_done and not self._ready and not self._inflight

    def _failed(self) -> bool:
        return self._error is not None

    def _requests(self, generation: int) -> Iterator[list[tuple[int, bytes]]]:
        """The request batches of one stream: every unacknowledged batch again, then new ones."""
        with self._cond:
            resend = list(self._inflight)
        now = time.monotonic()
        for batch in resend:
            batch.sent_at = now
            yield batch.records
        while True:
            with self._cond:
                while True:
                    if generation != self._generation or self._error is not None:
                        return  # this stream is dead; its successor resends what it sent
                    if self._ready:
                        batch = self._ready.popleft()
                        batch.sent_at = time.monotonic()
                        self._inflight.append(batch)
                        break
                    if self._closing and self._packer_done:
                        return  # half-close: the server acks what it has, then ends the stream
                    self._cond.wait(_POLL)
            yield batch.records

    def _acked(self, ack: BatchAck) -> None:
        with self._cond:
            batch = self._inflight.popleft()
            if ack.positions != batch.positions:  # acks arrive in order; anything else is a bug
                raise AssertionError(
                    f"ack for batch {ack.batch_id} says {ack.positions} positions, sent {batch.positions}"
                )
            self._written += ack.written
            self._unchanged += ack.unchanged
            self._positions += ack.positions
            self._bytes += batch.nbytes
            self._pending_records -= len(batch.records)
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                if not isinstance(exc, CacheError | ValueError | WriterClosedError):
                    log.exception("shard %d: writer failed", self.shard, exc_info=exc)
                self._error = exc
            if self._call is not None:
                self._call.cancel()
            self._cond.notify_all()


def _recorded_event() -> torch.cuda.Event:
    """An event on the current device's current stream, after the work queued so far."""
    event = torch.cuda.Event()
    event.record()
    return event


def _pinned_copy(x: Tensor) -> Tensor:
    """Start a non-blocking copy of device tensor ``x`` into pinned host memory."""
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x, non_blocking=True)
    return out


def _to_pinned_host(targets: SparseTargets) -> SparseTargets:
    """Start non-blocking copies of ``targets`` into pinned host memory (complete once an event fires)."""
    return targets.apply(_pinned_copy)
