"""Teacher inference on Ray Data: a local Ray instance (2 CPUs), two teacher actors, real servers, a tiny saved Llama.

The reference is ``logitcache teacher`` itself, run in this process once per rank (``RANK`` / ``WORLD_SIZE``)
with one torch thread, the arithmetic of a Ray actor that reserves one CPU: the Ray run must store the
same seqs with the same bytes under the same manifests, also when an actor dies mid-run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from logitcache.apps.cli import main as cli  # noqa: E402
from logitcache.apps.corpus import CorpusError  # noqa: E402
from logitcache.client import CacheClient, FailedPreconditionError  # noqa: E402
from logitcache.core import records  # noqa: E402
from logitcache.core.config import SamplerConfig  # noqa: E402
from logitcache.core.manifest import ShardManifest  # noqa: E402
from logitcache.integrations.ray import TeacherActor, run_teacher  # noqa: E402
from tests.server.helpers import running_server  # noqa: E402
from tests.writer.tiny_models import save_tiny_llama  # noqa: E402

SEQ_LEN = 16
SEQUENCES = 10
BATCH = 2  # rank 0: [0, 2) [2, 4) [4, 5); rank 1: [5, 7) [7, 9) [9, 10)
ROUNDS = 20
SHARD = 10  # the run's shards: 10 (seqs [0, 5)) and 11 (seqs [5, 10))
WORLD = 2


@dataclass(frozen=True)
class Stored:
    """Everything a server holds: each shard's manifest, sealed flag, seqs and record bytes."""

    manifests: dict[int, ShardManifest | None]
    sealed: dict[int, bool]
    records: dict[tuple[int, int], bytes]


def _stored(client: CacheClient) -> Stored:
    infos = client.list_shards()
    records = {}
    for info in infos:
        seqs = client.list_seqs(info.shard).tolist()
        assert info.sequences == len(seqs)  # every seq once
        records.update({(info.shard, seq): data for seq, data in client.read(info.shard, seqs=seqs)})
    return Stored({i.shard: i.manifest for i in infos}, {i.shard: i.sealed for i in infos}, records)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray-teacher")


@pytest.fixture(scope="module")
def teacher(root: Path) -> Path:
    return save_tiny_llama(root / "tiny-llama")


@pytest.fixture(scope="module")
def corpus(root: Path, teacher: Path) -> np.ndarray:
    """``root/train.bin``: SEQUENCES sequences of SEQ_LEN tokens, and a remainder the runs drop."""
    vocab = len(AutoTokenizer.from_pretrained(teacher))
    tokens = np.random.default_rng(0).integers(0, vocab, SEQUENCES * SEQ_LEN + 5, dtype=np.uint16)
    tokens.tofile(root / "train.bin")
    return tokens[: SEQUENCES * SEQ_LEN].reshape(SEQUENCES, SEQ_LEN)


def _cli(teacher: Path, data: Path, port: int, rank: int, *extra: str) -> None:
    """``logitcache teacher`` as rank ``rank`` of WORLD, in this process, with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RANK", str(rank))
            env.setenv("WORLD_SIZE", str(WORLD))
            args = ["teacher", "--model", str(teacher), "--data", str(data), "--seq-len", str(SEQ_LEN)]
            args += ["--server", f"127.0.0.1:{port}", "--shard", str(SHARD), "--batch-size", str(BATCH)]
            assert cli([*args, "--rounds", str(ROUNDS), "--no-progress", *extra]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli_data(root: Path, teacher: Path, corpus: np.ndarray) -> Path:
    """A server data directory that ``logitcache teacher`` filled, rank 0 and rank 1 of WORLD."""
    with running_server(root / "cli") as (server, _):
        for rank in range(WORLD):
            _cli(teacher, root / "train.bin", server.port, rank)
    return root / "cli"


@pytest.fixture(scope="module")
def reference(cli_data: Path) -> Stored:
    with running_server(cli_data) as (_, client):
        return _stored(client)


def _run(teacher: Path, data: Any, port: int, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "model": teacher,
        "server": f"127.0.0.1:{port}",
        "seq_len": SEQ_LEN,
        "shard": SHARD,
        "world_size": WORLD,
        "actors": 2,
        "batch_size": BATCH,
        "sampler": SamplerConfig(rounds=ROUNDS),
    }
    return run_teacher(data, **{**options, **overrides})


@pytest.fixture(scope="module")
def ray_filled(local_ray: None, root: Path, teacher: Path, corpus: np.ndarray) -> Iterator[tuple[Any, Any, Stored]]:
    """A server filled by the Ray pipeline (left unsealed), the run's summary, and what it then held."""
    with running_server(root / "ray") as (server, client):
        summary = _run(teacher, root / "train.bin", server.port, seal=False)
        yield server, summary, _stored(client)


def test_two_actors_store_the_seqs_bytes_and_manifests_of_logitcache_teacher(
    ray_filled: tuple[Any, Any, Stored], reference: Stored
) -> None:
    _, summary, stored = ray_filled
    assert (summary.shards, summary.sequences, summary.written, summary.skipped) == ((10, 11), SEQUENCES, 10, 0)
    assert (summary.batches, summary.positions, summary.unchanged, summary.sealed) == (6, SEQUENCES * SEQ_LEN, 0, ())
    assert summary.actor_cpu_seconds > 0
    assert stored.manifests == reference.manifests  # the same TeacherRun per shard: rank, slice, corpus, seed
    assert (
        sorted(stored.records)
        == sorted(reference.records)
        == [(10, s) for s in range(5)] + [(11, s) for s in range(5, 10)]
    )
    differing = [key for key in reference.records if stored.records[key] != reference.records[key]]
    assert differing == []
    assert stored.sealed == {10: False, 11: False}  # seal=False


def test_a_rerun_writes_nothing_and_seals(
    ray_filled: tuple[Any, Any, Stored], teacher: Path, root: Path, reference: Stored
) -> None:
    server, _, before = ray_filled
    again = _run(teacher, root / "train.bin", server.port)
    assert (again.written, again.skipped, again.batches, again.positions) == (0, SEQUENCES, 0, 0)
    assert again.sealed == (10, 11)
    with CacheClient(server.address) as client:
        after = _stored(client)
    assert after.records == before.records
    assert after.sealed == reference.sealed == {10: True, 11: True}


def _dies_after_its_first_batch(marker: Path) -> type[TeacherActor]:
    """A teacher actor that, on its first batch, stores it and then exits if it can take ``marker``."""

    class DiesOnce(TeacherActor):
        first = True

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = super().__call__(batch)  # stored and acknowledged: the retry rewrites identical bytes
            if self.first:
                self.first = False
                try:
                    marker.unlink()  # one actor takes it: the restarted actor finds it gone and carries on
                except FileNotFoundError:
                    return out
                os._exit(1)  # before returning: Ray restarts the actor and retries the task
            return out

    return DiesOnce


def test_an_actor_killed_mid_run_leaves_every_seq_stored_once_with_the_uninterrupted_bytes(
    local_ray: None, root: Path, teacher: Path, corpus: np.ndarray, reference: Stored
) -> None:
    marker = root / "die-once"
    marker.touch()
    with running_server(root / "killed") as (server, client):
        _cli(teacher, root / "train.bin", server.port, 0, "--no-seal")  # rank 0 ran already: a resume of rank 1
        dataset = ray.data.from_items([{"input_ids": row} for row in corpus.astype(np.int64)])  # the corpus, as rows
        summary = _run(teacher, dataset, server.port, actor_class=_dies_after_its_first_batch(marker))
        assert not marker.exists()  # an actor died
        assert (summary.written, summary.skipped, summary.batches) == (5, 5, 3)
        assert summary.unchanged >= 1  # the dead actor's batch, stored before it died, was sent again
        stored = _stored(client)
    assert stored.manifests == reference.manifests
    assert stored.sealed == {10: True, 11: True}
    assert sorted(stored.records) == sorted(reference.records)
    assert [key for key in reference.records if stored.records[key] != reference.records[key]] == []


def test_bad_input_raises_the_cli_errors_and_stores_nothing(
    local_ray: None, root: Path, teacher: Path, corpus: np.ndarray, cli_data: Path, reference: Stored
) -> None:
    data = root / "train.bin"
    with running_server(cli_data) as (server, client):
        # the CLI's run filled shards 10, 11 with WORLD_SIZE=2: one shard of the same corpus is refused
        with pytest.raises(ValueError, match=r"run\.world_size: 2 \(stored\) vs 1 \(this run\)"):
            _run(teacher, data, server.port, world_size=1)
        with pytest.raises(ValueError, match=r"shard 10 already holds seqs \[0, 5\) of this corpus"):
            _run(teacher, data, server.port, shard=12)
        with pytest.raises(ValueError, match=r"rounds: 20 \(stored\) vs 30 \(this run\)"):
            _run(teacher, data, server.port, sampler=SamplerConfig(rounds=30))
        with pytest.raises(ValueError, match=r"batch_size: expected an integer >= 1, got 0"):
            _run(teacher, data, server.port, batch_size=0)
        with pytest.raises(ValueError, match=r"actors: expected an integer >= 1, got 0"):
            _run(teacher, data, server.port, actors=0)
        with pytest.raises(CorpusError, match="0 sequences"):
            _run(teacher, corpus[:0], server.port, shard=20)
        with pytest.raises(CorpusError, match="0 sequences"):
            _run(teacher, ray.data.from_items([{"input_ids": row} for row in corpus[:0]]), server.port, shard=20)
        (root / "empty.bin").write_bytes(b"")
        with pytest.raises(CorpusError, match="shorter than one sequence"):
            _run(teacher, root / "empty.bin", server.port, shard=20)
        with pytest.raises(CorpusError, match=r"expected shape \[n, 16\]"):
            _run(teacher, corpus[:, :8], server.port, shard=20)
        with pytest.raises(ValueError, match=r"token ids of seqs \[5, 10\) are outside the teacher's vocabulary"):
            _run(teacher, np.where(np.arange(SEQUENCES)[:, None] >= 5, 60000, corpus), server.port, shard=20)
        with pytest.raises(FileNotFoundError, match="no-model: no such directory"):
            _run(root / "no-model", data, server.port, shard=20)
        assert _stored(client) == reference  # nothing stored, nothing created, nothing sealed


def test_an_error_in_the_actors_reaches_the_caller_as_itself(
    local_ray: None, root: Path, teacher: Path, corpus: np.ndarray, reference: Stored
) -> None:
    manifest = reference.manifests[11]
    assert manifest is not None
    with running_server(root / "sealed") as (server, client):
        client.create_shard(11, manifest)  # the run's own shard 11, sealed empty (by hand): it takes no writes
        client.seal_shard(11)
        with pytest.raises(FailedPreconditionError, match="shard 11 is sealed"):
            _run(teacher, root / "train.bin", server.port, actors=1)
        assert client.get_shard(11).sequences == 0


def test_ray_data_reads_an_exported_shard(local_ray: None, root: Path, cli_data: Path, reference: Stored) -> None:
    """`logitcache export` writes plain parquet: Ray Data reads the targets without logitcache's code."""
    from logitcache.exports.files import export_shard, part_files

    with running_server(cli_data) as (_, client):
        summary = export_shard(client, SHARD, str(root / "exported"))
    rows = ray.data.read_parquet(part_files(summary.folder)).take_all()
    assert sorted(row["seq"] for row in rows) == [seq for shard, seq in sorted(reference.records) if shard == SHARD]
    for row in rows:
        assert list(row["input_ids"]) == list(records.decode(reference.records[(SHARD, row["seq"])]).input_ids)
