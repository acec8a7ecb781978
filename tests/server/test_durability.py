"""`logitcache serve` as a real process: SIGKILL in the middle of a write stream, SIGTERM, restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from logitcache.client import CacheError
from logitcache.core import records
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, make_records


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, started: list[ServerProcess]) -> None:
    items = make_records(240)
    by_seq = dict(items)
    server = ServerProcess(tmp_path)
    started.append(server)
    with server.client() as client:
        client.create_shard(0, MANIFEST)
    acked: list[int] = []
    failure: list[BaseException] = []
    enough = threading.Event()
    batches = [items[i : i + 2] for i in range(0, len(items), 2)]

    def write() -> None:
        with server.client() as client:
            try:
                for ack in client.write_batches(0, batches):
                    acked.extend(seq for seq, _ in batches[ack.batch_id])
                    if len(acked) >= 40:
                        enough.set()
            except CacheError as exc:
                failure.append(exc)
            finally:
                enough.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert enough.wait(60)
    server.proc.send_signal(signal.SIGKILL)
    writer.join(60)
    assert failure, "the stream should have been cut by the kill"
    assert 40 <= len(acked) < len(items)

    restarted = ServerProcess(tmp_path)
    started.append(restarted)
    with restarted.client() as client:
        for seq, data in client.read(0, seqs=acked):
            assert data == by_seq[seq]
        stored = list(client.read(0, ranges=[(0, 1 << 20)]))
        assert {seq for seq, _ in stored} >= set(acked)
        for seq, data in stored:  # whatever got in is whole: a committed batch, never half of one
            assert data == by_seq[seq]
            records.decode(data)
        assert len(stored) % 2 == 0
        info = client.get_shard(0)
        assert info.sequences == len(stored)
        assert info.positions == sum(records.read_header(d).num_positions for _, d in stored)
        # and the writer can resume: retries of what is stored are no-ops
        summary = client.write(0, items)
        assert (summary.unchanged, summary.written) == (len(stored), len(items) - len(stored))


def test_sigterm_stops_gracefully_and_env_configures(tmp_path: Path, started: list[ServerProcess]) -> None:
    server = ServerProcess(tmp_path, env={"LOGITCACHE_DATA_DIR": str(tmp_path / "from-env")})
    started.append(server)
    with server.client() as client:
        client.create_shard(3, MANIFEST)
        client.write(3, make_records(4))
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    server._drain.join(10)
    assert any("SIGTERM received" in line for line in server.log)
    assert any("stopped" in line for line in server.log)
    assert (tmp_path / "from-env" / "shards" / f"{3:010d}").is_dir()
    again = ServerProcess(tmp_path / "from-env")
    started.append(again)
    with again.client() as client:
        assert client.get_shard(3).sequences == 4


def test_bad_settings_exit_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "logitcache", "serve", "--grpc", "nonsense", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "expected host:port" in done.stderr
