"""Damaged files: bits flipped in a stopped shard's ``data.mdb`` at keys, values, branch pages and
meta pages, and at random. Every read is then the exact stored record or a clear error; no record
is ever served under another seq; a damaged shard is listed as damaged (gRPC, REST, ``/readyz``,
``/metrics``) and ``logitcache verify`` reports it; the other shards serve on."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import lmdb
import pytest
import torch

from logitcache.client import CacheError, DataLossError, NotFoundError
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.server import layout
from logitcache.server.errors import CorruptRecordError, SeqNotFoundError, ShardDamagedError, StoreError
from logitcache.server.store import Store
from logitcache.targets.sampling import sample_random
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, VOCAB, make_records

N = 211  # seqs 0..210 are written, 211 never is (the case)
_P_BRANCH = 0x01
REPO = Path(__file__).resolve().parents[2]


def _build(data_dir: Path) -> dict[int, bytes]:
    """Shard 0 (to be damaged) and shard 1 (healthy), the same N records each; the store closed."""
    items = make_records(N, seed=11)
    store = Store(data_dir)
    for shard in (0, 1):
        store.create_shard(shard, MANIFEST)
        for at in range(0, N, 16):
            store.get(shard).write_batch(items[at : at + 16])
    store.close()
    return dict(items)


def _data_file(data_dir: Path, shard: int = 0) -> Path:
    return layout.shard_dir(data_dir, shard) / "data.mdb"


def _flip(path: Path, offset: int, mask: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def _node_of(path: Path, seq: int) -> int:
    """The file offset of seq's key in its leaf node (the key is followed by its envelope: the seq)."""
    raw = path.read_bytes()
    key = layout.key_of(seq)
    node = key + key[: layout.ENVELOPE_BYTES]
    at = raw.find(node)
    assert at >= 0
    assert raw.find(node, at + 1) < 0
    return at


def _records_root(raw: bytes) -> int:
    """The page number of the records tree's root, read from the newest meta page and the main tree."""
    newest = max((0, 4096), key=lambda page: struct.unpack_from("<Q", raw, page + 144)[0])
    main_root = struct.unpack_from("<Q", raw, newest + 128)[0]
    page = main_root * 4096
    (lower,) = struct.unpack_from("<H", raw, page + 12)
    for i in range((lower - 16) // 2):  # the main tree's leaf: one node per named database
        (node,) = struct.unpack_from("<H", raw, page + 16 + 2 * i)
        (ksize,) = struct.unpack_from("<H", raw, page + node + 6)
        if raw[page + node + 8 : page + node + 8 + ksize] == layout.RECORDS_DB:
            return int(struct.unpack_from("<Q", raw, page + node + 8 + ksize + 40)[0])  # its MDB_db's md_root
    raise AssertionError("no records database in the main tree")


def _branch_keys(path: Path) -> list[int]:
    """File offsets of the separator keys in the records tree's root, a branch page."""
    raw = path.read_bytes()
    page = _records_root(raw) * 4096
    assert struct.unpack_from("<H", raw, page + 10)[0] & _P_BRANCH, "the records tree should have a branch page"
    (lower,) = struct.unpack_from("<H", raw, page + 12)
    nodes = [struct.unpack_from("<H", raw, page + 16 + 2 * i)[0] for i in range(1, (lower - 16) // 2)]
    return [page + node + 8 for node in nodes]  # node 0 has an empty key


def _verify(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``logitcache verify`` over ``data_dir``, as a user runs it."""
    command = [sys.executable, "-m", "logitcache", "verify", "--data-dir", str(data_dir), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _reads(store: Store, shard: int, items: dict[int, bytes]) -> dict[str, int]:
    """Read every seq and a few never written: exact, or a clear error, never another seq's record."""
    outcomes = {"exact": 0, "error": 0}
    s = store.get(shard)
    for seq in range(N + 5):
        try:
            data = s.get(seq)
        except SeqNotFoundError:
            assert seq not in items, f"seq {seq} is stored, but NOT_FOUND was answered"
            continue
        except (CorruptRecordError, ShardDamagedError):
            outcomes["error"] += 1
            continue
        assert data == items[seq], f"seq {seq} was served another record"
        outcomes["exact"] += 1
    try:
        for chunk in s.read_range(0, N + 5):
            for seq, data in chunk:
                assert data == items[seq], f"a range read served another record under seq {seq}"
    except StoreError:
        pass
    return outcomes


def test_a_flipped_key_never_serves_another_seqs_record(tmp_path: Path) -> None:
    items = _build(tmp_path)
    _flip(_data_file(tmp_path), _node_of(_data_file(tmp_path), 210) + 7, 0x01)  # key 210 → 211
    store = Store(tmp_path)
    try:
        damaged = store.get(0)
        assert damaged.damage is not None
        assert "a damaged key" in damaged.damage  # found at open, by the key's own CRC
        with pytest.raises(ShardDamagedError, match="seq 211"):
            damaged.get(211)  # it holds 210's record: refused, never served as 211
        with pytest.raises(ShardDamagedError, match="seq 210 is not found in shard 0, which is damaged"):
            damaged.get(210)  # not NOT_FOUND: the damage hid it
        assert _reads(store, 0, items)["exact"] == N - 1
        with pytest.raises(ShardDamagedError):
            list(damaged.seq_runs())
        with pytest.raises(ShardDamagedError):
            damaged.write_batch(make_records(1, start=300))
        assert store.get(1).damage is None
        assert _reads(store, 1, items) == {"exact": N, "error": 0}
        assert any("shard 0 is damaged" in reason for reason in store.unready())
    finally:
        store.close()


def test_a_flipped_value_is_data_loss_for_that_record_only(tmp_path: Path) -> None:
    items = _build(tmp_path)
    _flip(_data_file(tmp_path), _node_of(_data_file(tmp_path), 100) + 20 + 200, 0x10)  # inside the record
    store = Store(tmp_path)
    try:
        shard = store.get(0)
        assert shard.damage is None  # the tree is sound
        with pytest.raises(CorruptRecordError, match="seq 100 of shard 0 is corrupted on disk: checksum"):
            shard.get(100)
        assert shard.stats().damaged_records == 1
        assert _reads(store, 0, items) == {"exact": N - 1, "error": 1}
        assert shard.write_batch([(100, items[100])], overwrite=True).written == 1  # an overwrite repairs it
        assert shard.get(100) == items[100]
        assert shard.stats().damaged_records == 0
    finally:
        store.close()


def test_a_damaged_branch_page_is_found_at_open(tmp_path: Path) -> None:
    items = _build(tmp_path)
    separators = _branch_keys(_data_file(tmp_path))
    _flip(_data_file(tmp_path), separators[len(separators) // 2] + 7, 0x02)  # misroutes searches near it
    store = Store(tmp_path)
    try:
        damaged = store.get(0)
        assert damaged.damage is not None
        assert "a search for it fails" in damaged.damage
        outcomes = _reads(store, 0, items)  # the misrouted seqs, and the unwritten ones (a damaged shard's misses)
        assert N - 4 <= outcomes["exact"] < N
        assert outcomes["exact"] + outcomes["error"] == N + 5
    finally:
        store.close()


@pytest.mark.parametrize("pages", [(0, 1), (1,)], ids=["both-meta-pages", "newest-meta-page"])
def test_damaged_meta_pages_are_found_at_open(pages: tuple[int, ...], tmp_path: Path) -> None:
    items = _build(tmp_path)
    for page in pages:
        offset = page * 4096 + (16 if len(pages) == 2 else 144)  # the magic; or the transaction id
        _flip(_data_file(tmp_path), offset, 0x04)
    store = Store(tmp_path)
    try:
        damaged = store.get(0)
        assert damaged.damage is not None
        assert "meta page" in damaged.damage
        assert [s.shard_id for s in store.shards()] == [0, 1]  # listed, not dropped
        with pytest.raises(ShardDamagedError):
            damaged.get(5)
        info = damaged.stats()
        assert (info.damage, info.manifest) == (damaged.damage, None)
        assert _reads(store, 1, items) == {"exact": N, "error": 0}
    finally:
        store.close()


def test_random_bit_flips_never_serve_a_wrong_record(tmp_path: Path) -> None:
    """Bits flipped anywhere in data.mdb, 40 times: each trial opens and reads in a child process,
    so that LMDB misreading a damaged page could only kill the child (it must not)."""
    _build(tmp_path / "pristine")
    done = subprocess.run(
        [sys.executable, "-m", "tests.server.test_damage", str(tmp_path / "pristine"), str(tmp_path / "trial"), "40"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 40
    assert summary["damaged_found"] >= 1  # some flips hit the tree or the records and were seen


def _random_trials(pristine: Path, work: Path, trials: int) -> None:
    items = dict(make_records(N, seed=11))
    rnd = random.Random(0)
    size = _data_file(pristine).stat().st_size
    found = 0
    for trial in range(trials):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        offsets = [rnd.randrange(size) for _ in range(rnd.choice((1, 2, 8)))]
        for offset in offsets:
            _flip(_data_file(work), offset, 1 << rnd.randrange(8))
        print(f"trial {trial}: flipped {offsets}", flush=True)
        store = Store(work)
        try:
            outcomes = _reads(store, 0, items)
            found += store.get(0).damage is not None or outcomes["error"] > 0
            assert _reads(store, 1, items) == {"exact": N, "error": 0}
        finally:
            store.close()
    print(json.dumps({"trials": trials, "damaged_found": found}))


@pytest.fixture
def damaged_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    _build(tmp_path)
    if request.param == "key":
        _flip(_data_file(tmp_path), _node_of(_data_file(tmp_path), 210) + 7, 0x01)
    else:  # both meta pages: the shard cannot open at all
        _flip(_data_file(tmp_path), 16, 0x04)
        _flip(_data_file(tmp_path), 4096 + 16, 0x04)
    server = ServerProcess(tmp_path)
    yield server, tmp_path
    server.stop()


@pytest.mark.parametrize("damaged_server", ["key", "meta"], indirect=True)
def test_a_damaged_shard_is_reported_on_every_surface(damaged_server: tuple[ServerProcess, Path]) -> None:
    server, data_dir = damaged_server
    with server.client() as client, httpx.Client(base_url=server.url, timeout=30) as http:
        listed = {info.shard: info for info in client.list_shards()}
        assert sorted(listed) == [0, 1]  # listed, never dropped
        assert listed[0].damage
        assert not listed[1].damage
        with pytest.raises(DataLossError, match="shard 0 is damaged"):
            client.get_shard(0)
        with pytest.raises(DataLossError):
            list(client.read(0, ranges=[(0, N)]))
        with pytest.raises(DataLossError):
            list(client.read(0, seqs=[210]))
        with pytest.raises(CacheError) as never_211:
            list(client.read(0, seqs=[211]))
        assert not isinstance(never_211.value, NotFoundError) or listed[0].manifest is not None
        assert client.get_shard(1).sequences == N  # the other shard serves on
        assert len(list(client.read(1, ranges=[(0, N)]))) == N
        rest = {s["shard"]: s for s in http.get("/v1/shards").json()}
        assert rest[0]["damage"] == listed[0].damage
        assert rest[1]["damage"] is None
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert "shard 0 is damaged" in ready.json()["detail"]
        metrics = http.get("/metrics").text
        assert 'logitcache_shard_damaged{shard="0"} 1.0' in metrics
        assert 'logitcache_shard_damaged{shard="1"} 0.0' in metrics
    busy = _verify(data_dir, "--json")
    assert busy.returncode == 2  # the files must rest: not beside a running server
    assert "in use by another logitcache server" in busy.stderr
    server.proc.terminate()
    assert server.proc.wait(timeout=60) == 0
    done = _verify(data_dir, "--json")
    assert done.returncode == 1, done.stderr
    reports = {r["shard"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert not reports[0]["ok"]
    assert reports[0]["problems"]
    assert reports[1]["ok"]
    assert reports[1]["records"] == N


def test_verify_names_each_damaged_record(tmp_path: Path) -> None:
    items = _build(tmp_path)
    for seq in (3, 150):
        _flip(_data_file(tmp_path), _node_of(_data_file(tmp_path), seq) + 20 + 100, 0x01)
    done = _verify(tmp_path)
    assert done.returncode == 1
    assert "shard 0: DAMAGED" in done.stdout
    assert "shard 1: ok, 211 records read" in done.stdout
    assert "seq 3: checksum" in done.stdout
    assert "seq 150: checksum" in done.stdout
    assert "2 shard(s) checked" in done.stdout
    assert "1 damaged" in done.stdout
    assert len(items) == N


def test_an_unknown_manifest_key_does_not_stop_the_start(tmp_path: Path) -> None:
    items = _build(tmp_path)
    env = lmdb.open(str(layout.shard_dir(tmp_path, 0)), max_dbs=4)
    with env.begin(write=True, db=env.open_db(layout.META_DB)) as txn:
        stored = json.loads(txn.get(layout.META_MANIFEST) or b"{}")
        txn.put(layout.META_MANIFEST, json.dumps({**stored, "written_by": "logitcache 9.0"}).encode())
    env.close()
    server = ServerProcess(tmp_path)
    try:
        with server.client() as client:
            assert client.get_shard(0).manifest == MANIFEST  # tolerated (and logged)
            assert dict(client.read(0, seqs=[7])) == {7: items[7]}
            assert client.get_shard(1).sequences == N
        assert any("ignoring unknown keys written_by" in line for line in server.log)
    finally:
        server.stop()
    with pytest.raises(TypeError):
        ShardManifest(**{**MANIFEST.__dict__, "written_by": "x"})  # refused when written


def test_a_store_format_1_shard_is_upgraded_in_place(tmp_path: Path) -> None:
    """Shards written by logitcache 0.1 hold bare records (no envelope, no format key)."""
    items = make_records(40, seed=2)
    path = layout.shard_dir(tmp_path, 0)
    path.mkdir(parents=True)
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 24)
    meta, records_db = env.open_db(layout.META_DB), env.open_db(layout.RECORDS_DB)
    with env.begin(write=True) as txn:
        txn.put(layout.META_MANIFEST, MANIFEST.to_json().encode(), db=meta)
        txn.put(layout.META_POSITIONS, layout.U64.pack(sum(32 for _ in items)), db=meta)
        txn.put(layout.META_BYTES, layout.U64.pack(sum(len(d) for _, d in items)), db=meta)
        for seq, data in items:
            txn.put(seq.to_bytes(8, "big"), data, db=records_db)  # format 1: the bare seq as key
    env.close()
    store = Store(tmp_path)
    try:
        shard = store.get(0)
        assert shard.damage is None
        assert [pair for chunk in shard.read_range(0, 100) for pair in chunk] == items
    finally:
        store.close()
    done = _verify(tmp_path)
    assert done.returncode == 0, done.stdout


if __name__ == "__main__":  # the random trials' child process
    _random_trials(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))


def test_a_damaged_length_of_a_large_record_is_found_before_lmdb_reads_it(tmp_path: Path) -> None:
    """Records of more than ~2 KB live on LMDB overflow pages; LMDB trusts the length in their leaf
    node, so a flipped bit there sends a read past the file: a SIGBUS that would kill the server."""
    gen = torch.Generator().manual_seed(3)
    large = [
        (seq, records.encode(torch.randint(0, VOCAB, (400,), generator=gen), sample_random(
            lm_like_logits(400, VOCAB, generator=gen), 20, generator=gen)))
        for seq in range(12)
    ]  # fmt: skip
    assert len(large[0][1]) > 4096
    any_length = ShardManifest(vocab_size=VOCAB, method="sampled", rounds=20)
    store = Store(tmp_path)
    store.create_shard(0, any_length).write_batch(large)
    store.close()
    raw = _data_file(tmp_path).read_bytes()
    node = struct.pack("<HH", 1, layout.KEY_BYTES) + layout.key_of(5)  # F_BIGDATA, the key's size, the key
    hits = [at for at in range(len(raw)) if raw.startswith(node, at)]
    assert hits
    for at in hits:  # the node's size field, high half: the record now "ends" megabytes past the file
        _flip(_data_file(tmp_path), at - 2, 0x40)
    store = Store(tmp_path)  # the file is checked before LMDB maps it: found, and never handed to LMDB
    try:
        shard = store.get(0)
        assert shard.damage is not None
        assert "overflow extent" in shard.damage
        with pytest.raises(ShardDamagedError, match="shard 0 is damaged: structure"):
            shard.get(4)
    finally:
        store.close()
    done = _verify(tmp_path)
    assert done.returncode == 1, done.stderr
    assert "shard 0: DAMAGED" in done.stdout
    assert "overflow extent" in done.stdout
    for at in hits:  # repaired: the same bytes open and serve again
        _flip(_data_file(tmp_path), at - 2, 0x40)
    store = Store(tmp_path)
    try:
        assert store.get(0).damage is None
        assert store.get(0).get(5) == large[5][1]
    finally:
        store.close()


def test_an_upgrade_that_cannot_finish_leaves_the_other_shards_serving(tmp_path: Path) -> None:
    items = make_records(900, seed=2)  # about 700 KB of bare records: no room left to rewrite them in 1 MiB
    _build(tmp_path)  # shards 0 and 1, format 2
    path = layout.shard_dir(tmp_path, 7)
    path.mkdir(parents=True)
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 20)
    meta, records_db = env.open_db(layout.META_DB), env.open_db(layout.RECORDS_DB)
    with env.begin(write=True) as txn:
        txn.put(layout.META_MANIFEST, MANIFEST.to_json().encode(), db=meta)
        for seq, data in items:
            txn.put(seq.to_bytes(8, "big"), data, db=records_db)
    env.close()
    store = Store(tmp_path, initial_map_size=1 << 20, max_map_size=1 << 20)
    try:
        assert "cannot be opened" in (store.get(7).damage or "")
        assert "--max-shard-bytes" in (store.get(7).damage or "")
        assert [s.shard_id for s in store.shards()] == [0, 1, 7]
        assert store.get(1).get(3) == dict(make_records(N, seed=11))[3]  # the others serve on
    finally:
        store.close()
