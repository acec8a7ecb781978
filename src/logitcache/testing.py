"""Real servers and real load for the tests, benchmarks and experiments.

* :class:`ServerProcess`: ``python -m logitcache serve`` as a child process on free loopback
  ports, its ports read from its log (``stop()`` is SIGKILL, as the crash tests need;
  ``proc.terminate()`` is the graceful SIGTERM).
* :class:`StreamLoad`: many concurrent gRPC streams from one asyncio client on an event loop of
  its own (hundreds of sync-gRPC threads would measure the client, not the server): idle streams,
  and writers timed to their last acknowledgement.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc

from logitcache.client import CacheClient
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.proto.v1 import cache_pb2_grpc as pb_grpc

T = TypeVar("T")


class ServerProcess:
    """A server on a free gRPC port and, with ``http``, a free HTTP port. ``extra`` flags override."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None, http: bool = True) -> None:
        args = [sys.executable, "-m", "logitcache", "serve", "--grpc", "127.0.0.1:0"]
        args += ["--http", "127.0.0.1:0" if http else "off", *extra]
        full_env = {**os.environ, **(env or {})}
        if "LOGITCACHE_DATA_DIR" not in full_env:
            args += ["--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=full_env)
        self.log: list[str] = []
        self._logged = threading.Condition()
        self.port, self.http_port = self._wait_for_ports(http)
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _wait_for_ports(self, http: bool) -> tuple[int, int | None]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        grpc_port = http_port = None
        while time.monotonic() < deadline and (grpc_port is None or (http and http_port is None)):
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited early: {''.join(self.log)}")
            self.log.append(line)
            if found := re.search(r"serving grpcs?://[\d.]+:(\d+)", line):
                grpc_port = int(found.group(1))
            if found := re.search(r"serving http://[\d.]+:(\d+)", line):
                http_port = int(found.group(1))
        if grpc_port is None or (http and http_port is None):
            raise RuntimeError("server did not report its ports in time")
        return grpc_port, http_port

    def _read_rest(self) -> None:
        stream: IO[str] | None = self.proc.stderr
        assert stream is not None
        for line in stream:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 60) -> str:
        """The first log line matching the regular expression ``pattern``, waiting for it if needed."""
        found: list[str] = []

        def match() -> bool:
            found[:] = [line for line in self.log if re.search(pattern, line)][:1]
            return bool(found)

        with self._logged:
            if not self._logged.wait_for(match, timeout):
                raise TimeoutError(f"no log line matched {pattern!r} within {timeout} s")
        return found[0]

    def client(self, token: str | None = None, *, timeout: float = 30) -> CacheClient:
        return CacheClient(self.address, timeout=timeout, auth_token=token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


class StreamLoad:
    """Concurrent streams to the server at ``address``, driven from a thread of this process."""

    def __init__(self, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stream-load", daemon=True)
        self._thread.start()
        self._idle: list[grpc.aio.Call] = []
        self._release: asyncio.Event | None = None
        self._channel: grpc.aio.Channel = self._run(self._connect(address))

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _connect(self, address: str) -> grpc.aio.Channel:
        self._release = asyncio.Event()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        return grpc.aio.insecure_channel(address, options=options)

    def open_idle(self, writes: list[tuple[int, int, bytes]], reads: list[pb.ReadRequest]) -> None:
        """Write streams that send one record ``(shard, seq, data)`` each, get its ack and stay open;
        Read streams that take their first message and read no more."""
        self._run(self._open_idle(writes, reads))

    async def _open_idle(self, writes: list[tuple[int, int, bytes]], reads: list[pb.ReadRequest]) -> None:
        stub = pb_grpc.LogitCacheStub(self._channel)
        release = self._release
        assert release is not None

        async def one(shard: int, seq: int, data: bytes) -> AsyncIterator[pb.WriteRequest]:
            yield pb.WriteRequest(shard=shard, records=[pb.Record(seq=seq, data=data)])
            await release.wait()  # then idle, like a writer between batches

        for shard, seq, data in writes:
            call = stub.Write(one(shard, seq, data))
            ack = await call.read()
            if ack is grpc.aio.EOF or ack.written + ack.unchanged != 1:
                raise RuntimeError(f"an idle stream's write to shard {shard} was not acknowledged: {ack}")
            self._idle.append(call)
        for request in reads:
            call = stub.Read(request)
            await call.read()
            self._idle.append(call)

    def write(self, streams: list[tuple[int, list[list[tuple[int, bytes]]]]]) -> float:
        """One Write stream per ``(shard, batches)``, all at once; seconds until the last acknowledgement."""
        return self._run(self._write(streams))

    async def _write(self, streams: list[tuple[int, list[list[tuple[int, bytes]]]]]) -> float:
        stub = pb_grpc.LogitCacheStub(self._channel)

        async def stream(shard: int, batches: list[list[tuple[int, bytes]]]) -> None:
            requests = [
                pb.WriteRequest(shard=shard, batch_id=i, records=[pb.Record(seq=s, data=d) for s, d in batch])
                for i, batch in enumerate(batches)
            ]
            acks = [ack async for ack in stub.Write(iter(requests))]
            if len(acks) != len(batches):
                raise RuntimeError(f"shard {shard}: {len(acks)} acks for {len(batches)} batches")

        started = time.perf_counter()
        await asyncio.gather(*(stream(shard, batches) for shard, batches in streams))
        return time.perf_counter() - started

    def close(self) -> None:
        async def close() -> None:
            if self._release is not None:
                self._release.set()
            for call in self._idle:
                call.cancel()
            await self._channel.close()

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
