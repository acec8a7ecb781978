"""Group commit: the write batches of every stream, per shard, in as few durable transactions as possible.

A ``Write`` stream hands each validated batch to :meth:`Committer.submit` and awaits its result.
Each shard has a queue; while one transaction of the shard is committing (in a thread of the
commit pool, so the event loop never waits on a disk), the batches that arrive queue up, and the
next transaction takes them all at once: one fsync for many streams. A transaction takes at
most one batch per stream and shard, so a stream's batches to a shard commit in the order it
sent them; once one of its batches fails (or is refused), the batches it sent after that one
and not yet committed are dropped unstored, on every shard (the stream ends with that error,
after the acks of the batches before it; a later batch that a transaction of another shard
already took is never acknowledged, as any batch of a broken stream may or may not be stored).
Every result is set after the transaction holding it committed, so an acknowledgement always
follows its own data's commit.

Bytes waiting for a commit, over all shards, are bounded by ``max_pending_bytes``: a batch past
the bound is refused at once with :class:`~logitcache.server.errors.ServerBusyError`
(``RESOURCE_EXHAUSTED``, with a retry delay), never queued without limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

from logitcache.server.disk import human_bytes
from logitcache.server.errors import ServerBusyError, ShardNotFoundError
from logitcache.server.shard import Batch, Shard, WriteResult

__all__ = ["Committer", "StreamState"]

_MAX_GROUP_BYTES = 256 << 20  # one transaction's data at most (a large group still commits as one)


@dataclass(eq=False)
class StreamState:
    """One ``Write`` stream, as the committer sees it."""

    submitted: int = 0  # batches handed to the committer so far
    failed_at: int | None = None  # the first of its batches that failed: the ones after it are dropped

    def fail(self, index: int) -> None:
        self.failed_at = index if self.failed_at is None else min(self.failed_at, index)

    def dropped(self, index: int) -> bool:
        return self.failed_at is not None and index > self.failed_at


@dataclass(eq=False)
class _Pending:
    batch: Batch
    stream: StreamState
    index: int  # the batch's place in its stream
    future: asyncio.Future[WriteResult]


@dataclass(eq=False)
class _ShardQueue:
    shard: Shard
    items: deque[_Pending] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Committer:
    """Per-shard group commit on ``pool``; at most ``max_pending_bytes`` waiting over all shards."""

    def __init__(self, pool: Executor, max_pending_bytes: int) -> None:
        self._pool = pool
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        self._queues: dict[int, _ShardQueue] = {}

    async def submit(self, shard: Shard, batch: Batch, stream: StreamState) -> WriteResult:
        """Commit ``batch`` (grouped with others); the result once it is durable, or its error."""
        nbytes = batch.nbytes
        index = stream.submitted
        stream.submitted += 1
        if shard.deleted:  # never a queue for it: it would take the place of a new shard's with the same id
            stream.fail(index)
            raise ShardNotFoundError(f"shard {shard.shard_id} was deleted")
        if self.pending_bytes and self.pending_bytes + nbytes > self.max_pending_bytes:
            stream.fail(index)
            raise ServerBusyError(
                f"the server has {human_bytes(self.pending_bytes)} waiting for commit, at its bound of "
                f"{human_bytes(self.max_pending_bytes)} (--max-pending-commit-bytes); retry shortly"
            )
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(shard.shard_id)
        if queue is None or queue.shard is not shard:
            queue = self._queues[shard.shard_id] = _ShardQueue(shard)
        queue.items.append(_Pending(batch, stream, index, future))
        self.pending_bytes += nbytes
        if queue.task is None:
            queue.task = asyncio.create_task(self._drain(queue), name=f"commit-shard-{shard.shard_id}")
        return await future

    def _take(self, queue: _ShardQueue) -> list[_Pending]:
        """The next group: the first waiting batch of each stream, up to the group's size."""
        group: list[_Pending] = []
        rest: deque[_Pending] = deque()
        streams: set[int] = set()
        size = 0
        for item in queue.items:
            if item.future.done() or item.stream.dropped(item.index):  # after a failure, or its stream ended
                self.pending_bytes -= item.batch.nbytes
                item.future.cancel()
            elif id(item.stream) in streams or (group and size + item.batch.nbytes > _MAX_GROUP_BYTES):
                rest.append(item)
            else:
                group.append(item)
                streams.add(id(item.stream))
                size += item.batch.nbytes
        queue.items = rest
        return group

    async def _drain(self, queue: _ShardQueue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while group := self._take(queue):
                outcomes: list[WriteResult | BaseException]
                try:
                    outcomes = list(
                        await loop.run_in_executor(self._pool, queue.shard.commit, [item.batch for item in group])
                    )
                except Exception as exc:  # refused as a whole (a damaged shard, a full disk): every batch fails
                    outcomes = [exc] * len(group)
                for item, outcome in zip(group, outcomes, strict=True):
                    self.pending_bytes -= item.batch.nbytes
                    if isinstance(outcome, BaseException):
                        item.stream.fail(item.index)
                        if not item.future.done():
                            item.future.set_exception(outcome)
                    elif not item.future.done():
                        item.future.set_result(outcome)
        finally:
            queue.task = None

    async def wait_idle(self) -> None:
        """Wait until every queued batch has been committed or dropped (a graceful stop)."""
        while tasks := [q.task for q in self._queues.values() if q.task is not None]:
            await asyncio.gather(*tasks, return_exceptions=True)
