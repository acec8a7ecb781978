"""``logitcache shards``: against a real server, through the command's real entry point."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from logitcache.apps.cli import main
from logitcache.core import records
from logitcache.core.manifest import TeacherRun
from logitcache.server import layout
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records, running_server

TOKEN = "s3cret"
RUN = TeacherRun(
    corpus_fingerprint="xxh64:0123456789abcdef", sequences=10, world_size=1, rank=0, seq_start=0, seq_stop=10, seed=0
)


def _shards(capsys: pytest.CaptureFixture[str], port: int, *argv: str) -> tuple[int, str, str]:
    code = main(["shards", *argv, "--server", f"127.0.0.1:{port}"])
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_info_seal_and_rm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOGITCACHE_AUTH_TOKEN", raising=False)
    with running_server(tmp_path, auth_token=TOKEN) as (server, client):
        port = server.port
        assert _shards(capsys, port, "ls") == (
            0,
            f"no shards on 127.0.0.1:{port}: `logitcache teacher` fills them\n",
            "",
        )
        client.create_shard(0, TOPK_MANIFEST)
        client.write(0, make_records(2, topk=True))
        client.create_shard(1, dataclasses.replace(MANIFEST, run=RUN))
        stored = [item for item in make_records(10) if item[0] not in (5, 6, 8, 9)]
        client.write(1, stored)

        code, out, _ = _shards(capsys, port, "ls")
        assert code == 0
        header, *rows = out.splitlines()
        assert header.split() == ["SHARD", "METHOD", "TEACHER", "SEQS", "POSITIONS", "B/POS", "SEALED", "DAMAGED"]
        assert rows[0].split() == [
            "0",
            "top-5",
            "-",
            "2",
            "64",
            f"{client.get_shard(0).record_bytes / 64:.1f}",
            "no",
            "no",
        ]
        assert rows[1].split()[:6] == ["1", "sampled", "N=20", "tiny", "6", "192"]
        code, out, _ = _shards(capsys, port, "ls", "--json")
        listed = json.loads(out)
        assert [s["shard"] for s in listed] == [0, 1]
        assert listed[1]["manifest"]["run"]["seq_stop"] == 10
        assert listed[1]["sequences"] == 6

        code, out, _ = _shards(capsys, port, "info", "1")
        assert code == 0
        assert "method       sampled N=20" in out
        assert "slice        seqs [0, 10): rank 0 of 1, seed 0" in out
        assert "complete     no: 6 sequences stored, 4 missing" in out
        assert "missing seqs [5, 7)" in out
        assert "missing seqs [8, 10)" in out
        assert "targets      over the first 6 seqs, per position:" in out
        code, out, _ = _shards(capsys, port, "info", "1", "--json")
        info = json.loads(out)
        assert (info["missing"], info["gaps"], info["complete"]) == (4, [[5, 7], [8, 10]], False)
        entries = np.concatenate([np.diff(records.decode(data).offsets) for _, data in stored])
        assert info["sample"]["sequences"] == 6
        assert info["sample"]["mean_unique_tokens"] == pytest.approx(float(entries.mean()))
        assert info["sample"]["max_entropy"] == pytest.approx(np.log(20))
        code, out, _ = _shards(capsys, port, "info", "1", "--sample", "2", "--json")
        assert json.loads(out)["sample"]["sequences"] == 2

        # mutations need the token: refused, nothing changed
        code, _, err = _shards(capsys, port, "seal", "1")
        assert code == 1
        assert err.startswith("logitcache shards seal: UNAUTHENTICATED: ")
        assert not client.get_shard(1).sealed
        monkeypatch.setenv("LOGITCACHE_AUTH_TOKEN", TOKEN)
        assert _shards(capsys, port, "seal", "1")[:2] == (0, "shard 1 sealed (6 sequences)\n")
        assert client.get_shard(1).sealed

        code, _, err = _shards(capsys, port, "rm", "1")
        assert code == 1
        assert "shard 1 is sealed" in err
        assert err.rstrip().endswith("needs force (add --force)")
        assert client.get_shard(1).sequences == 6
        code, out, _ = _shards(capsys, port, "rm", "1", "--force")
        assert code == 0
        assert out.startswith("shard 1 deleted (6 sequences, ")
        assert out.rstrip().endswith(", sealed)")
        code, out, _ = _shards(capsys, port, "rm", "0", "--json", "--auth-token", TOKEN)
        assert json.loads(out)["shard"] == 0
        assert client.list_shards() == []

        code, _, err = _shards(capsys, port, "info", "9")
        assert (code, err) == (1, f"logitcache shards info: NOT_FOUND: shard 9 does not exist on 127.0.0.1:{port}\n")


def test_a_damaged_shard_is_listed_and_described(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(2, MANIFEST)
    (layout.shard_dir(tmp_path, 2) / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    with running_server(tmp_path) as (server, _):
        code, out, _ = _shards(capsys, server.port, "ls")
        assert code == 0
        assert out.splitlines()[1].split()[:2] == ["2", "?"]
        assert out.splitlines()[1].split()[-1] == "yes"
        code, out, _ = _shards(capsys, server.port, "info", "2")
        assert code == 0
        assert "DAMAGED: " in out
        assert "complete     unknown (the shard is damaged)" in out
        assert json.loads(_shards(capsys, server.port, "info", "2", "--json")[1])["complete"] is None


def test_an_unreachable_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(tmp_path) as (server, _):
        port = server.port
    for action in (["ls"], ["info", "0"], ["seal", "0"], ["rm", "0"]):
        code, out, err = _shards(capsys, port, *action, "--timeout", "5")
        assert (code, out) == (1, "")
        assert err.startswith(f"logitcache shards {action[0]}: cannot reach 127.0.0.1:{port} (is a server running?): ")
        assert len(err.splitlines()) == 1, err


def test_the_server_from_the_environment_and_a_bad_shard_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_server(tmp_path) as (server, client):
        client.create_shard(4, MANIFEST)
        monkeypatch.setenv("LOGITCACHE_SERVER", f"127.0.0.1:{server.port}")
        assert main(["shards", "ls", "--json"]) == 0
        assert [s["shard"] for s in json.loads(capsys.readouterr().out)] == [4]
        with pytest.raises(SystemExit) as exited:
            main(["shards", "rm", "--", "-1"])
        assert exited.value.code == 2
        assert "expected a shard number 0 <= shard < 2**32, got -1" in capsys.readouterr().err
        assert client.get_shard(4).shard == 4
