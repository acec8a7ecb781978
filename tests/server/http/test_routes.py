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
from tests.server.helpers import MANIFEST, SEQ_LEN, TOPK_MANIFEST, VOCAB, corrupt_stored, make_records, run_serve


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
            overview = http.get("/v1/shards/0/stats").json()  # the overview leaves the record out, and says so
            assert (overview["sampled_sequences"], overview["corrupt_sequences"]) == (2, 1)
            assert overview["positions"] == 2 * SEQ_LEN
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
    done = run_serve("--data-dir", str(tmp_path), "--http-reads-need-token")
    assert done.returncode == 2
    assert "expected an auth_token" in done.stderr


# ---- tokenizers: loading, choosing per shard, and what the API says ----------------------------------


def _other_tokenizer(path: Path) -> Path:
    """Another vocabulary (another fingerprint) over the same ids."""
    tokenizer = Tokenizer(WordLevel({f"v{i}": i for i in range(VOCAB)}, unk_token="v0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def test_server_info_and_the_tokenizer_status_of_a_shard(served: Served, tmp_path: Path) -> None:
    from logitcache.core.tokenizers import tokenizer_fingerprint

    info = served.http.get("/v1/server").json()
    assert info["grpc_address"] == served.server.address
    assert info["writes_need_token"] is True
    [tokenizer] = info["tokenizers"]
    assert tokenizer["name"].endswith("/tokenizer.json")
    assert tokenizer["vocab_size"] == VOCAB
    same = Tokenizer.from_file(str(_tiny_tokenizer(tmp_path / "tokenizer.json")))  # built the same way: the same one
    assert tokenizer["fingerprint"] == tokenizer_fingerprint(same)
    # the manifests record no fingerprint and one tokenizer is loaded: used, flagged as unverified
    for path in ("/v1/shards/0", "/v1/shards/0/sequences/0", "/v1/shards/0/sequences/0/positions/0"):
        status = served.http.get(path).json()["tokenizer"]
        assert status["status"] == "unverified", path
        assert status["fingerprint"] == ""
        assert status["name"] == tokenizer["name"]
        assert "no tokenizer fingerprint" in status["detail"]


def test_each_shard_gets_the_tokenizer_whose_fingerprint_it_records(tmp_path: Path) -> None:
    from logitcache.core.tokenizers import tokenizer_fingerprint

    (tmp_path / "tokenizers" / "words").mkdir(parents=True)
    words = _tiny_tokenizer(tmp_path / "tokenizers" / "words" / "tokenizer.json")
    other = _other_tokenizer(tmp_path / "tokenizers" / "other" / "tokenizer.json")
    fingerprints = {
        name: tokenizer_fingerprint(Tokenizer.from_file(str(p))) for name, p in (("w", words), ("v", other))
    }
    items = make_records(1)
    ids = records.decode(items[0][1]).input_ids.tolist()
    server = ServerProcess(tmp_path / "data", "--tokenizer", str(tmp_path / "tokenizers"))  # a directory of them
    try:
        with server.client() as client:
            for shard, fingerprint in enumerate([fingerprints["w"], fingerprints["v"], "xxh64:0000000000000000"]):
                client.create_shard(shard, dataclasses.replace(MANIFEST, tokenizer_fingerprint=fingerprint))
                client.write(shard, items)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert len(http.get("/v1/server").json()["tokenizers"]) == 2
            for shard, prefix in ((0, "w"), (1, "v")):
                body = http.get(f"/v1/shards/{shard}/sequences/0").json()
                assert body["tokenizer"]["status"] == "matched"
                assert body["tokenizer"]["name"] == ("words" if prefix == "w" else "other") + "/tokenizer.json"
                expected = [_word(i) if prefix == "w" else f"v{i}" for i in ids]
                assert [p["token"] for p in body["positions"]] == expected
            mismatch = http.get("/v1/shards/2/sequences/0").json()
            assert mismatch["tokenizer"]["status"] == "mismatch"
            assert "xxh64:0000000000000000" in mismatch["tokenizer"]["detail"]
            assert all(p["token"] is None for p in mismatch["positions"])
            position = http.get("/v1/shards/2/sequences/0/positions/0").json()
            assert (position["tokens"], position["input_token"], position["label_token"]) == (None, None, None)
            assert position["tokenizer"]["status"] == "mismatch"
            assert http.get("/v1/shards/2").json()["tokenizer"]["status"] == "mismatch"
    finally:
        server.stop()


def test_choose_tokenizer() -> None:
    from logitcache.server.http.deps import LoadedTokenizer, choose_tokenizer

    a, b = LoadedTokenizer("a/tokenizer.json", "xxh64:a", "A"), LoadedTokenizer("b/tokenizer.json", "xxh64:b", "B")
    with_b = dataclasses.replace(MANIFEST, tokenizer_fingerprint="xxh64:b")
    assert choose_tokenizer([a, b], with_b).status == "matched"
    assert choose_tokenizer([a, b], with_b).tokenizer == "B"
    assert choose_tokenizer([a], with_b).status == "mismatch"
    assert choose_tokenizer([a], with_b).tokenizer is None
    assert choose_tokenizer([], with_b).status == "none"
    assert choose_tokenizer([a], MANIFEST).status == "unverified"
    assert choose_tokenizer([a], MANIFEST).tokenizer == "A"
    two = choose_tokenizer([a, b], MANIFEST)
    assert (two.status, two.tokenizer) == ("none", None)
    assert "2 tokenizers" in two.detail
    assert choose_tokenizer([a], None).status == "none"  # a damaged shard's unreadable manifest


def test_load_tokenizers_from_files_and_directories(tmp_path: Path) -> None:
    from logitcache.server.http.app import load_tokenizers

    (tmp_path / "models" / "words").mkdir(parents=True)
    words = _tiny_tokenizer(tmp_path / "models" / "words" / "tokenizer.json")
    _other_tokenizer(tmp_path / "models" / "other" / "tokenizer.json")
    (tmp_path / "models" / "deeper" / "nested").mkdir(parents=True)
    _other_tokenizer(tmp_path / "models" / "deeper" / "nested" / "tokenizer.json")  # two levels down: not looked at
    loaded = load_tokenizers([tmp_path / "models", words])  # words twice: kept once
    assert [t.name for t in loaded] == ["other/tokenizer.json", "words/tokenizer.json"]
    assert len({t.fingerprint for t in loaded}) == 2
    with pytest.raises(ValueError, match=r"expected a tokenizer\.json file or a directory"):
        load_tokenizers([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no tokenizer\.json in"):
        load_tokenizers([tmp_path / "empty"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json does not load"):
        load_tokenizers([tmp_path / "bad.json"])


def test_tokenizer_settings_take_one_path_or_many(monkeypatch: pytest.MonkeyPatch) -> None:
    from logitcache.server.settings import ServerSettings

    assert ServerSettings().tokenizer == []
    assert ServerSettings(tokenizer="a/tokenizer.json").tokenizer == [Path("a/tokenizer.json")]
    assert ServerSettings(tokenizer=["a", "b"]).tokenizer == [Path("a"), Path("b")]
    monkeypatch.setenv("LOGITCACHE_TOKENIZER", "/models/llama/tokenizer.json")
    assert ServerSettings().tokenizer == [Path("/models/llama/tokenizer.json")]
    monkeypatch.setenv("LOGITCACHE_TOKENIZER", '["/models/a", "/models/b"]')
    assert ServerSettings().tokenizer == [Path("/models/a"), Path("/models/b")]
    monkeypatch.setenv("LOGITCACHE_TOKENIZER", "[not json")
    with pytest.raises(ValueError, match="a JSON list of paths"):
        ServerSettings()


def test_a_bad_tokenizer_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    done = run_serve("--data-dir", str(tmp_path / "d"), "--tokenizer", str(tmp_path))
    assert done.returncode == 2
    assert "no tokenizer.json in" in done.stderr


# ---- the overview's histograms, against a plain recomputation ------------------------------------------


def _reference_histograms(items: list[tuple[int, bytes]]) -> dict[str, list[int]]:
    """The stats endpoint's histograms, position by position in plain Python."""
    entropy, residual, label, per_byte = [], [], [], []
    max_entries = 0
    for _, data in items:
        record = records.decode(data)
        probs = record.target_probs(dtype=np.float64)
        max_entries = record.header.max_entries_per_position
        for pos in range(record.header.num_positions):
            lo, hi = record.offsets[pos], record.offsets[pos + 1]
            p = probs[lo:hi]
            entropy.append(-sum(q * math.log(q) for q in p if q > 0))
            residual.append(min(1.0, max(0.0, 1.0 - float(p.sum()))))
            if pos + 1 < record.header.num_positions:
                hit = record.token_ids[lo:hi] == record.input_ids[pos + 1]
                label.append(float(p[hit].sum()))
        per_byte.append(len(data) / record.header.num_positions)
    top = math.log(max(2, max_entries))

    def binned(values: list[float], lo: float, hi: float) -> list[int]:
        counts = [0] * 20
        for v in values:
            counts[min(19, max(0, int((v - lo) / (hi - lo) * 20)))] += 1
        return counts

    lo, hi = min(per_byte), max(per_byte)
    return {
        "entropy": binned(entropy, 0.0, top),
        "residual": binned(residual, 0.0, 1.0),
        "label_prob": binned(label, 0.0, 1.0),
        "bytes_per_position": binned(per_byte, lo, hi) if hi > lo else [0] * 10 + [len(per_byte)] + [0] * 9,
    }


@pytest.mark.parametrize("shard", [0, 1])
def test_shard_stats_histograms(served: Served, shard: int) -> None:
    body = served.http.get(f"/v1/shards/{shard}/stats").json()
    items = served.items[shard]
    expected = _reference_histograms(items)
    positions = len(items) * SEQ_LEN
    max_entries = 20 if shard == 0 else 5
    assert body["max_entropy"] == pytest.approx(math.log(max_entries))
    for name in ("entropy", "residual", "label_prob", "bytes_per_position"):
        histogram = body[f"{name}_histogram"]
        assert len(histogram["edges"]) == len(histogram["counts"]) + 1 == 21
        assert histogram["counts"] == expected[name], name
    assert sum(body["entropy_histogram"]["counts"]) == positions
    assert body["entropy_histogram"]["edges"][-1] == pytest.approx(math.log(max_entries))
    assert body["entropy_histogram"]["mean"] == pytest.approx(body["mean_entropy"])
    assert sum(body["label_prob_histogram"]["counts"]) == len(items) * (SEQ_LEN - 1)
    assert body["label_prob_histogram"]["mean"] == pytest.approx(body["mean_label_prob"])
    assert sum(body["bytes_per_position_histogram"]["counts"]) == len(items)
    sizes = [len(d) / SEQ_LEN for _, d in items]
    assert body["bytes_per_position_histogram"]["mean"] == pytest.approx(sum(sizes) / len(sizes))
    if shard == 1:  # top-k: the ghost mass is there, and binned
        assert body["residual_histogram"]["mean"] > 0.01
        assert body["residual_histogram"]["counts"][0] < positions


def test_sequence_states_its_absolute_entropy_scale(served: Served) -> None:
    assert served.http.get("/v1/shards/0/sequences/0").json()["max_entropy"] == pytest.approx(math.log(20))
    assert served.http.get("/v1/shards/1/sequences/0").json()["max_entropy"] == pytest.approx(math.log(5))
    assert served.http.get("/v1/shards/1/sequences/0/positions/0").json()["method"] == "topk"
