"""The REST API against a real `logitcache serve` process on free ports."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from logitcache.client import FailedPreconditionError
from logitcache.core import records
from logitcache.core.manifest import TeacherRun
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, SEQ_LEN, TOPK_MANIFEST, VOCAB, corrupt_stored, make_records


def _tiny_tokenizer(path: Path) -> Path:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["<|eos|>"] = 9  # a special token, so that decoding must keep it
    del vocab["w9"]
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tokenizer.add_special_tokens(["<|eos|>"])
    tokenizer.save(str(path))
    return path


def _word(i: int) -> str:
    return "<|eos|>" if i == 9 else f"w{i}"


class Served:
    def __init__(self, server: ServerProcess, items: dict[int, list[tuple[int, bytes]]]) -> None:
        self.server = server
        self.items = items
        self.http = httpx.Client(base_url=server.url, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("rest")
    tokenizer = _tiny_tokenizer(root / "tokenizer.json")
    sampled = [pair for pair in make_records(12) if pair[0] != 5]  # seq 5 missing: a gap
    topk = make_records(3, topk=True)
    server = ServerProcess(root / "data", "--tokenizer", str(tokenizer), "--auth-token", "tok")
    with server.client("tok") as client:
        client.create_shard(0, MANIFEST)
        client.write(0, sampled)
        client.create_shard(1, TOPK_MANIFEST)
        client.write(1, topk)
        client.create_shard(2, MANIFEST)
        client.write(2, make_records(2))
    served = Served(server, {0: sampled, 1: topk})
    yield served
    served.http.close()
    server.stop()


def test_health_and_readiness(served: Served) -> None:
    assert served.http.get("/healthz").json() == {"status": "ok"}
    assert served.http.get("/readyz").json() == {"status": "ready"}


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_metrics_move_with_writes_and_reads(served: Served) -> None:
    before = served.http.get("/metrics").text
    assert _metric(before, "logitcache_records_written_total") == 11 + 3 + 2
    assert _metric(before, 'logitcache_shard_sequences{shard="0"}') == 11
    assert "logitcache_write_ack_seconds_bucket" in before
    with served.server.client() as client:
        read = list(client.read(0, ranges=[(0, 100)]))
    after = served.http.get("/metrics").text
    assert _metric(after, "logitcache_records_read_total") >= _metric(before, "logitcache_records_read_total") + 11
    assert _metric(after, "logitcache_positions_read_total") >= 11 * SEQ_LEN
    assert _metric(after, "logitcache_read_batch_seconds_count") >= 1
    assert len(read) == 11


def test_shards_and_completeness(served: Served) -> None:
    shards = served.http.get("/v1/shards").json()
    assert [s["shard"] for s in shards] == [0, 1, 2]
    detail = served.http.get("/v1/shards/0").json()
    assert detail["manifest"]["method"] == "sampled"
    assert detail["manifest"]["teacher"] == "tiny"
    assert (detail["sequences"], detail["positions"]) == (11, 11 * SEQ_LEN)
    assert (detail["first_seq"], detail["last_seq"]) == (0, 11)
    assert (detail["missing"], detail["gaps"], detail["complete"]) == (1, [[5, 6]], False)
    assert detail["bytes_per_position"] == pytest.approx(detail["record_bytes"] / detail["positions"], abs=1e-3)
    assert served.http.get("/v1/shards/1").json()["complete"] is False  # no gap, but not sealed: maybe still filling
    run = TeacherRun(
        corpus_fingerprint="xxh64:0", sequences=700, world_size=1, rank=0, seq_start=0, seq_stop=700, seed=0
    )
    with served.server.client("tok") as client:
        client.create_shard(3, TOPK_MANIFEST)
        client.write(3, make_records(3, topk=True))
        client.seal_shard(3)
        client.create_shard(4, dataclasses.replace(MANIFEST, run=run))
        client.write(4, make_records(120))
        client.seal_shard(4)  # sealed early, at 120 of its run's 700 seqs
    assert served.http.get("/v1/shards/3").json()["complete"] is True
    partial = served.http.get("/v1/shards/4").json()
    assert partial["manifest"]["run"]["seq_stop"] == 700
    assert (partial["missing"], partial["gaps"], partial["complete"]) == (580, [[120, 700]], False)


def test_sequence_pages(served: Served) -> None:
    first = served.http.get("/v1/shards/0/sequences", params={"limit": 4}).json()
    assert [s["seq"] for s in first["sequences"]] == [0, 1, 2, 3]
    assert first["next_start"] == 4
    second = served.http.get("/v1/shards/0/sequences", params={"start": 4, "limit": 4}).json()
    assert [s["seq"] for s in second["sequences"]] == [4, 6, 7, 8]
    last = served.http.get("/v1/shards/0/sequences", params={"start": 10}).json()
    assert ([s["seq"] for s in last["sequences"]], last["next_start"]) == ([10, 11], None)
    assert all(s["positions"] == SEQ_LEN for s in first["sequences"])


def test_a_sequence_and_its_summaries(served: Served) -> None:
    seq, data = served.items[0][2]
    body = served.http.get(f"/v1/shards/0/sequences/{seq}").json()
    record = records.decode(data)
    assert body["method"] == "sampled"
    assert [p["input_id"] for p in body["positions"]] == record.input_ids.tolist()
    assert [p["token"] for p in body["positions"]] == [_word(i) for i in record.input_ids.tolist()]
    for pos in (0, 7, SEQ_LEN - 1):  # against a plain recomputation
        lo, hi = record.offsets[pos], record.offsets[pos + 1]
        probs = record.values[lo:hi] / record.header.rounds
        p = body["positions"][pos]
        assert p["entries"] == hi - lo
        assert p["top_prob"] == pytest.approx(probs.max())
        assert p["top_token"] == record.token_ids[lo:hi][probs.argmax()]
        assert p["entropy"] == pytest.approx(-sum(q * math.log(q) for q in probs))
        assert p["residual"] == pytest.approx(0.0, abs=1e-9)


def test_a_position(served: Served) -> None:
    seq, data = served.items[0][0]
    record = records.decode(data)
    body = served.http.get(f"/v1/shards/0/sequences/{seq}/positions/3").json()
    lo, hi = record.offsets[3], record.offsets[4]
    assert sorted(body["token_ids"]) == sorted(record.token_ids[lo:hi].tolist())
    assert sum(body["counts"]) == 20
    assert sum(body["probs"]) == pytest.approx(1.0)
    assert body["probs"] == sorted(body["probs"], reverse=True)
    assert body["input_id"] == record.input_ids[3]
    assert body["label"] == record.input_ids[4]
    assert body["label_token"] == _word(int(record.input_ids[4]))
    assert body["tokens"] == [_word(i) for i in body["token_ids"]]
    last = served.http.get(f"/v1/shards/0/sequences/{seq}/positions/{SEQ_LEN - 1}").json()
    assert last["label"] is None
    topk = served.http.get("/v1/shards/1/sequences/0/positions/0").json()
    assert topk["counts"] is None
    assert 0 < topk["residual"] < 1
    assert len(topk["token_ids"]) == 5


def test_shard_stats(served: Served) -> None:
    body = served.http.get("/v1/shards/0/stats").json()
    decoded = [records.decode(d) for _, d in served.items[0]]
    counts = np.concatenate([np.diff(r.offsets) for r in decoded])
    assert body["sampled_sequences"] == 11
    assert body["positions"] == 11 * SEQ_LEN
    assert sum(body["unique_tokens_histogram"]) == body["positions"]
    assert body["mean_unique_tokens"] == pytest.approx(counts.mean())
    assert body["mean_entropy"] > 0
    assert 0 <= body["mean_label_prob"] <= 1
    assert served.http.get("/v1/shards/0/stats", params={"sample": 2}).json()["sampled_sequences"] == 2


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/shards/9", 404, "shard 9 does not exist"),
        ("/v1/shards/0/sequences/5", 404, "seq 5 is not in shard 0"),
        ("/v1/shards/0/sequences/0/positions/32", 404, "pos 32 is not in seq 0 of shard 0"),
        ("/v1/shards/9/sequences/0/positions/0", 404, "shard 9"),
        ("/v1/shards/-1", 422, None),
        ("/v1/shards/abc", 422, None),
        ("/v1/shards/0/sequences/x", 422, None),
        ("/v1/shards/0/sequences?limit=0", 422, None),
        ("/v1/shards/0/sequences?start=-3", 422, None),
        ("/v1/shards/4294967296", 422, None),
        ("/v1/shards/0/sequences/18446744073709551615", 422, None),
        ("/v1/shards/9/seal", 405, None),
        ("/v1/shards/..%2F..%2Fetc", 404, None),  # no route matches: nothing is read
        ("/static/..%2F..%2Fpyproject.toml", 404, None),
    ],
)
def test_errors(served: Served, path: str, status: int, message: str | None) -> None:
    answer = served.http.get(path)
    assert answer.status_code == status
    detail = answer.json()["detail"]
    if message is not None:
        assert message in detail


def test_seal_needs_the_token(served: Served) -> None:
    assert served.http.post("/v1/shards/2/seal").status_code == 401
    assert served.http.post("/v1/shards/2/seal", headers={"authorization": "Bearer nope"}).status_code == 401
    not_json = served.http.post("/v1/shards/2/seal", headers={"authorization": "Bearer tok"})
    assert not_json.status_code == 415  # what a cross-origin form or no-cors fetch could send
    assert served.http.get("/v1/shards/2").json()["sealed"] is False
    sealed = served.http.post("/v1/shards/2/seal", headers={"authorization": "Bearer tok"}, json={})
    assert sealed.status_code == 200
    assert sealed.json()["sealed"] is True
    with served.server.client("tok") as client, pytest.raises(FailedPreconditionError, match="sealed"):
        client.write(2, make_records(1, start=10))


def test_openapi_and_docs(served: Served) -> None:
    schema = served.http.get("/openapi.json").json()
    assert "/v1/shards/{shard}/sequences/{seq}/positions/{pos}" in schema["paths"]
    assert "PositionDetail" in schema["components"]["schemas"]
    assert served.http.get("/docs").status_code == 200
    viewer = served.http.get("/")
    assert viewer.status_code == 200
    assert "viewer.js" in viewer.text
    assert "http" not in re.sub(r"<!--.*?-->", "", served.http.get("/static/viewer.js").text.split("\n", 1)[1])


def test_corrupt_records_are_500_and_counted(tmp_path: Path) -> None:
    items = make_records(3)
    server = ServerProcess(tmp_path)
    try:
        with server.client() as client:
            client.create_shard(0, MANIFEST)
            client.write(0, items)
    finally:
        server.stop()
    corrupt_stored(tmp_path, 0, 1, at=150)
    server = ServerProcess(tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.get("/v1/shards/0/sequences/1")
            assert answer.status_code == 500
            assert answer.json()["detail"].startswith("DATA_LOSS: seq 1 of shard 0")
            assert http.get("/v1/shards/0/sequences/2").status_code == 200  # still serving
            assert _metric(http.get("/metrics").text, 'logitcache_errors_total{code="DATA_LOSS"}') == 1
    finally:
        server.stop()


def test_reads_can_need_the_token(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--auth-token", "tok", "--http-reads-need-token")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/v1/shards").status_code == 401
            assert http.get("/v1/shards", headers={"authorization": "Bearer tok"}).json() == []
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()


def test_special_and_unknown_tokens_stay_visible(tmp_path: Path) -> None:
    from logitcache.server.http.app import load_tokenizer
    from logitcache.server.http.routes import _decode

    tokenizer = load_tokenizer(_tiny_tokenizer(tmp_path / "tokenizer.json"))
    assert _decode(tokenizer, [9, 5, VOCAB + 7]) == ["<|eos|>", "w5", f"<{VOCAB + 7}>"]


def test_readiness_under_concurrent_probes(served: Served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: served.http.get("/readyz").status_code, range(64)))
    assert codes == [200] * 64


def test_reads_needing_a_token_need_a_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "logitcache", "serve", "--data-dir", str(tmp_path), "--http-reads-need-token"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "expected an auth_token" in done.stderr
