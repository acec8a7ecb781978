"""`logitcache demo`: the guided run, as a newcomer starts it (a real process), and its data directory."""

from __future__ import annotations

import inspect
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from logitcache.apps import demo
from logitcache.apps.demo import (
    MARKER,
    QUICK,
    TEACHER_NAME,
    DemoError,
    DemoOptions,
    TinyLM,
    corpus_texts,
    prepare_data_dir,
    run_demo,
)
from logitcache.core import records
from logitcache.server.store import Store

URL = re.compile(r"open (http://127\.0\.0\.1:(\d+)/) to see what is stored")


def _demo_args(data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "logitcache",
        "demo",
        "--quick",
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOGITCACHE_")}


def test_quick_run_caches_trains_and_exits(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo-data"
    done = subprocess.run(
        _demo_args(data_dir, "--no-wait"), capture_output=True, text=True, timeout=240, env=_env(), check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    found = URL.search(out)
    assert found is not None, out
    assert int(found.group(2)) != 0  # the real port, not the requested 0
    assert re.search(r"gRPC 127\.0\.0\.1:[1-9]\d*", out), out
    cached = re.search(r"cached +([\d,]+) positions in (\d+) sequences \(shard 0\), ([\d.]+) bytes/position", out)
    assert cached is not None, out
    assert re.search(r"student +next-token loss [\d.]+ → [\d.]+ .*KD loss [\d.]+ → [\d.]+", out), out
    assert "teacher" in done.stderr  # the progress bars
    assert "pos/s" in done.stderr
    # the process is gone: the data directory can be opened, and holds what the summary says
    store = Store(data_dir)
    try:
        (shard,) = store.shards()
        info = shard.stats()
        assert info.shard == 0
        assert info.sequences == int(cached.group(2)) > 0
        assert info.positions == int(cached.group(1).replace(",", ""))
        assert info.manifest is not None
        assert info.manifest.teacher == TEACHER_NAME
        assert info.manifest.tokenizer_fingerprint.startswith("xxh64:")
        assert info.manifest.seq_len == QUICK.seq_len
        assert info.manifest.method == "sampled"
        assert info.manifest.rounds == QUICK.rounds
        record = records.decode(shard.get(0))
        assert record.header.num_positions == QUICK.seq_len
        assert int(record.input_ids.max()) < info.manifest.vocab_size
    finally:
        store.close()
    assert (data_dir / "tokenizer.json").is_file()
    assert (data_dir / MARKER).is_file()


def test_serves_until_ctrl_c(tmp_path: Path) -> None:
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            _demo_args(tmp_path / "demo-data", "--no-progress"),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(),
        )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    try:
        seen: list[str] = []
        url = None
        deadline = time.monotonic() + 240
        while url is None:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line, f"the demo exited early: {''.join(seen)}"
            seen.append(line)
            if found := URL.search(line):
                url = found.group(1)
        response = httpx.get(f"{url}v1/shards", timeout=30)
        assert response.status_code == 200
        shards = response.json()
        assert [s["shard"] for s in shards] == [0]
        assert shards[0]["sequences"] > 0
        assert httpx.get(url, timeout=30).status_code == 200  # the viewer
        assert proc.poll() is None, "the demo should wait for Ctrl-C"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        rest = []
        while (line := lines.get(timeout=5)) != "":
            rest.append(line)
        assert "interrupted" in "".join(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # stopped cleanly: the store's lock is free and the records are there
    store = Store(tmp_path / "demo-data")
    try:
        assert store.get(0).stats().sequences > 0
    finally:
        store.close()


# --------------------------------------------------------------------------- pieces, in-process


def test_data_dir_new_is_created_with_a_marker(tmp_path: Path) -> None:
    assert prepare_data_dir(tmp_path / "new") is False
    assert (tmp_path / "new" / MARKER).is_file()


def test_data_dir_of_an_earlier_demo_is_emptied(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    prepare_data_dir(data_dir)
    (data_dir / "shards" / "0000000000").mkdir(parents=True)
    (data_dir / "shards" / "0000000000" / "data.mdb").write_bytes(b"old")
    (data_dir / "tokenizer.json").write_text("{}")
    assert prepare_data_dir(data_dir) is True
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([MARKER, ".lock"])


def test_data_dir_with_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="files the demo did not make"):
        prepare_data_dir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(DemoError, match="expected a directory"):
        prepare_data_dir(tmp_path / "file")


def test_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    prepare_data_dir(data_dir)
    (data_dir / "shards").mkdir()
    store = Store(data_dir)  # a running demo's server holds the lock
    try:
        with pytest.raises(DemoError, match="in use"):
            prepare_data_dir(data_dir)
        assert (data_dir / "shards").is_dir()  # nothing removed
    finally:
        store.close()


def test_corpus_is_the_package_docstrings() -> None:
    texts = corpus_texts()
    assert sum(map(len, texts)) > 20_000
    assert inspect.getdoc(demo) in texts
    assert sum(map(len, corpus_texts(3000))) < 3000 + max(map(len, texts))


def test_tiny_lm_is_causal() -> None:
    torch.manual_seed(0)
    model = TinyLM(50, 16, 2, max_len=12).eval()
    ids = torch.randint(0, 50, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 12, 50)
    torch.testing.assert_close(a[:, :7], b[:, :7])  # positions before 7 do not see token 7
    assert not torch.allclose(a[:, 7:], b[:, 7:])


# --------------------------------------------------------------------------- Ctrl-C in each phase, in-process


def _ctrl_c_once_running(thread_prefix: str, stop: threading.Event) -> threading.Thread:
    """A watcher that sends this process a real SIGINT once a thread named ``thread_prefix*`` runs."""

    def watch() -> None:
        while not stop.is_set():
            if any(t.name.startswith(thread_prefix) and t.is_alive() for t in threading.enumerate()):
                os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt in the main thread
                return
            stop.wait(0.01)

    watcher = threading.Thread(target=watch, name="test-ctrl-c", daemon=True)
    watcher.start()
    return watcher


@pytest.mark.parametrize(
    ("phase", "thread_prefix"),
    [("caching", "logitcache-send-"), ("student", "logitcache-prefetch")],  # the writer's / the loader's thread
)
def test_ctrl_c_stops_every_thread_and_the_server(
    phase: str, thread_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    watcher = _ctrl_c_once_running(thread_prefix, stop)
    options = DemoOptions(data_dir=tmp_path / "demo-data", quick=True, wait=False, progress=False)
    try:
        status = run_demo(options)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert status == 130, f"no Ctrl-C arrived while {thread_prefix}* ran"
    out = capsys.readouterr().out
    assert "interrupted" in out
    assert "open http" not in out
    corpus = re.search(r"→ (\d+) sequences", out)
    assert corpus is not None, out
    for thread in set(threading.enumerate()) - before:  # every thread of ours ends (joined, not abandoned)
        if _ours(thread):
            thread.join(timeout=10)
            assert not thread.is_alive(), thread
    store = Store(tmp_path / "demo-data")  # the server let go of the directory
    try:
        if phase == "student":  # interrupted in training: the cache was complete
            assert store.get(0).stats().sequences == int(corpus.group(1))
    finally:
        store.close()


def _ours(thread: threading.Thread) -> bool:
    return thread.name.startswith("logitcache-") or thread.name == "http"
