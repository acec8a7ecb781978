"""A full disk is a state, not a crash: real small file systems (tmpfs, and a loop-mounted ext4
image), mounted by the test as root, filled under a real server process.

On a full tmpfs LMDB used to die with SIGBUS (it maps its lock file sparsely); on ext4 a full disk
was ``INTERNAL "mdb_txn_commit: Input/output error"``. With the floor (``--min-free-bytes``) the
server refuses before the file system is full; with a floor of 0 the file system really runs
out under LMDB, and the failed commit is recognised as a full disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import lmdb
import pytest

from logitcache.client import ResourceExhaustedError
from logitcache.server import layout
from logitcache.server.disk import DiskSpace
from logitcache.server.errors import DiskFullError
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small file system needs root and mount"
)
SIZE = 12 << 20


@contextmanager
def small_file_system(kind: str, root: Path) -> Iterator[Path]:
    """A fresh ``kind`` ('tmpfs' or 'ext4') file system of SIZE bytes, mounted under ``root``."""
    mount_point = root / "mnt"
    mount_point.mkdir()
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount_point)]
    else:
        image = root / "disk.img"
        with open(image, "wb") as f:
            f.truncate(SIZE)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)  # -m 0: nothing reserved for root
        command = ["mount", "-o", "loop", str(image), str(mount_point)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {kind} file system here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(mount_point: Path, leave: int, name: str = "filler") -> Path:
    """A filler file that leaves about ``leave`` bytes free."""
    filler = mount_point / name
    st = os.statvfs(mount_point)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(filler, "wb") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    return filler


@pytest.mark.parametrize(
    ("kind", "floor"),
    [("tmpfs", 1 << 20), ("tmpfs", 0), ("ext4", 1 << 20), ("ext4", 0)],
    ids=["tmpfs-floor", "tmpfs-no-floor", "ext4-floor", "ext4-no-floor"],
)
def test_a_full_disk_is_resource_exhausted_and_passes_when_space_is_freed(
    kind: str, floor: int, tmp_path: Path
) -> None:
    with small_file_system(kind, tmp_path) as mount_point:
        data_dir = mount_point / "data"
        server = ServerProcess(data_dir, "--min-free-bytes", str(floor), "--initial-map-bytes", str(1 << 20))
        try:
            items = make_records(2000, seed=5)
            acked: list[tuple[int, bytes]] = []
            with server.client() as client, httpx.Client(base_url=server.url, timeout=30) as http:
                client.create_shard(0, MANIFEST)
                client.write(0, items[:32])
                acked += items[:32]
                filler = _fill(mount_point, leave=floor + (1 << 20))
                with pytest.raises(ResourceExhaustedError) as refused:  # noqa: PT012 - write until refused
                    for at in range(32, len(items), 16):
                        client.write(0, items[at : at + 16])
                        acked += items[at : at + 16]
                message = refused.value.details
                assert str(data_dir.resolve()) in message or "file system is full" in message, message
                assert refused.value.retry_after is not None  # retry later: it passes when space is freed
                assert server.proc.poll() is None  # no crash
                with pytest.raises(ResourceExhaustedError, match="creating shard 1"):
                    client.create_shard(1, TOPK_MANIFEST)  # it used to be SIGBUS on tmpfs
                assert server.proc.poll() is None
                stored = dict(client.read(0, seqs=[seq for seq, _ in acked]))  # reads go on, acked data intact
                assert stored == dict(acked)
                assert client.get_shard(0).sequences == len(acked)
                assert "logitcache_data_dir_free_bytes" in http.get("/metrics").text
                under = _fill(mount_point, leave=floor // 2, name="under-the-floor")
                ready = http.get("/readyz")  # under the floor (or full): not ready, and says why
                assert ready.status_code == 503
                assert f"the data directory {data_dir.resolve()} has" in ready.json()["detail"]

                filler.unlink()  # space is freed: writes resume without a restart
                under.unlink()
                more = items[len(acked) : len(acked) + 16]
                assert client.write(0, more).written == len(more)
                assert client.create_shard(1, TOPK_MANIFEST).sequences == 0
                assert http.get("/readyz").status_code == 200
                assert dict(client.read(0, seqs=[seq for seq, _ in more])) == dict(more)
        finally:
            server.stop()


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_a_commit_that_runs_out_of_space_is_a_full_disk(kind: str, tmp_path: Path) -> None:
    """The check before each commit leaves room, so LMDB itself runs out only when something else
    fills the disk meanwhile: here the commit is made to run out, and its error is recognised."""
    with small_file_system(kind, tmp_path) as mount_point:
        (mount_point / "env").mkdir()
        env = layout.open_env(mount_point / "env", map_size=64 << 20)
        disk = DiskSpace(mount_point, 0)
        try:
            _fill(mount_point, leave=256 << 10)
            with pytest.raises(lmdb.Error) as failed, env.begin(write=True) as txn:  # noqa: PT012 - its commit fails
                for i in range(64):
                    txn.put(i.to_bytes(8, "big"), os.urandom(64 << 10))
            error = disk.explain(failed.value, "shard 0: writing 4 MiB", 8 << 20)
            assert isinstance(error, DiskFullError), failed.value  # LMDB's short write reads as EIO
            assert "the file system is full" in str(error)
            assert f"the data directory {mount_point} has" in str(error)
        finally:
            env.close()
    assert not isinstance(DiskSpace(tmp_path, 0).explain(lmdb.CorruptedError("x"), "what"), DiskFullError)
