"""``logitcache export`` / ``import``: sealed shards to parquet and back, local and on S3, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from logitcache.apps import cli
from logitcache.client import CacheClient, NotFoundError
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.exports.columns import MANIFEST_KEY, ExportDataError
from logitcache.exports.files import MARKER, export_shard, exported_folders, import_shard, part_files
from logitcache.server.runner import ServerThread
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records, running_server

SHARD = 3


def stored(client: CacheClient, shard: int) -> dict[int, bytes]:
    return {seq: bytes(data) for seq, data in client.read_views(shard, ranges=client.seq_runs(shard))}


def fill(client: CacheClient, shard: int, manifest: ShardManifest, items: list[tuple[int, bytes]]) -> None:
    client.create_shard(shard, manifest)
    client.write(shard, items)
    client.seal_shard(shard)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[ServerThread, CacheClient]]:
    """A server whose shard 3 holds 40 sealed records (seqs 10..49, 17 missing)."""
    with running_server(tmp_path / "source") as (server, client):
        fill(client, SHARD, MANIFEST, [(s, d) for s, d in make_records(40, seed=4, start=10) if s != 17])
        yield server, client


@pytest.fixture
def target(tmp_path: Path) -> Iterator[CacheClient]:
    with running_server(tmp_path / "target") as (_, client):
        yield client


@pytest.mark.parametrize("store", ["local", "s3"])
@pytest.mark.parametrize("manifest", [MANIFEST, TOPK_MANIFEST], ids=["sampled", "topk"])
def test_an_export_imports_back_byte_identically(
    tmp_path: Path, target: CacheClient, store: str, manifest: ShardManifest, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] | None = None
    dest = str(tmp_path / "exports")
    if store == "s3":
        dest, options = request.getfixturevalue("s3_bucket")
        dest += "/kd/cache"
    items = make_records(40, seed=5, start=1000, topk=manifest.method == "topk")
    with running_server(tmp_path / "source") as (_, client):
        fill(client, SHARD, manifest, items)
        summary = export_shard(client, SHARD, dest, rows_per_file=16, storage_options=options)
        original = stored(client, SHARD)
        info = client.get_shard(SHARD)
    assert (summary.sequences, summary.files) == (40, 3)
    assert summary.folder.endswith(f"/kd/cache/shard-{SHARD:010d}" if store == "s3" else f"shard-{SHARD:010d}")
    (folder,) = exported_folders(dest, options)
    imported = import_shard(folder, target, storage_options=options)
    assert (imported.shard, imported.written, imported.unchanged) == (SHARD, 40, 0)
    assert stored(target, SHARD) == original == dict(items)
    copy = target.get_shard(SHARD)
    assert copy.sealed
    assert copy.manifest == info.manifest
    assert copy.record_bytes == info.record_bytes
    again = import_shard(folder, target, storage_options=options)  # the same sealed shard: nothing to do
    assert (again.written, again.unchanged) == (0, 40)


def test_other_engines_read_the_rows_as_flat_arrays(tmp_path: Path, source: tuple[ServerThread, CacheClient]) -> None:
    datasets = pytest.importorskip("datasets")
    _, client = source
    export_shard(client, SHARD, str(tmp_path / "out"), rows_per_file=16)
    files = part_files(exported_folders(str(tmp_path / "out"))[0])
    table = pq.read_table(files)  # pyarrow alone
    manifest = ShardManifest.from_json(pq.read_schema(files[0]).metadata[MANIFEST_KEY])
    assert manifest == MANIFEST
    hf_cache = str(tmp_path / "hf")
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=hf_cache)  # Hugging Face
    assert ds.num_rows == table.num_rows == 39
    row = ds[0]
    record = records.decode(stored(client, SHARD)[row["seq"]])
    assert row["input_ids"] == record.input_ids.tolist()
    assert row["token_ids"] == record.token_ids.tolist()
    assert row["entry_counts"] == np.diff(record.offsets).tolist()
    assert sum(row["values"][: row["entry_counts"][0]]) == MANIFEST.rounds  # sampled: the draws at position 0
    assert table.column("seq").to_pylist() == [s for s in range(10, 50) if s != 17]


def test_only_sealed_shards_are_exported_and_an_export_is_not_overwritten(
    tmp_path: Path, source: tuple[ServerThread, CacheClient]
) -> None:
    _, client = source
    client.create_shard(4, MANIFEST)
    client.write(4, make_records(3, seed=1))
    with pytest.raises(ValueError, match="shard 4 is not sealed"):
        export_shard(client, 4, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "shard-0000000004" / MARKER).exists()
    export_shard(client, SHARD, str(tmp_path / "out"))
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds an export of shard 3"):
        export_shard(client, SHARD, str(tmp_path / "out"))
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


def _rewrite(path: Path, change: Any) -> None:
    """Rewrite a part file with ``change(table)``, keeping its schema and metadata."""
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def _bump_a_token(table: pa.Table) -> pa.Table:
    column = table.column("token_ids").combine_chunks()
    values = column.values.to_numpy().copy()
    values[5] = (values[5] + 1) % MANIFEST.vocab_size
    edited = pa.ListArray.from_arrays(column.offsets, pa.array(values))
    return table.set_column(table.schema.get_field_index("token_ids"), "token_ids", edited)


def _renumber(table: pa.Table) -> pa.Table:
    """Every seq + 1000: the records' checksums still match, the seqs are not the stored ones."""
    seqs = pc.add(table.column("seq"), pa.scalar(1000, pa.uint64()))
    return table.set_column(table.schema.get_field_index("seq"), "seq", seqs)


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda p: _rewrite(p, _bump_a_token), ExportDataError, "re-encodes to checksum"),
        (lambda p: _rewrite(p, lambda t: t.drop_columns(["checksum"])), ExportDataError, r"columns \['checksum'\]"),
        (lambda p: _rewrite(p, _renumber), ExportDataError, "its seqs are not the exported ones"),
        (lambda p: _rewrite(p, lambda t: t.slice(1)), ExportDataError, "15 rows"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), ExportDataError, "cannot be read as parquet"),
        (lambda p: p.unlink(), ExportDataError, "missing"),
        (lambda p: (p.parent / MARKER).unlink(), FileNotFoundError, "not a complete shard export"),
    ],
    ids=["edited-token", "missing-column", "renumbered-seqs", "missing-row", "truncated", "missing-file", "no-marker"],
)
def test_a_changed_or_damaged_export_is_refused_and_leaves_nothing_stored(
    tmp_path: Path,
    source: tuple[ServerThread, CacheClient],
    target: CacheClient,
    damage: Any,
    error: type[Exception],
    match: str,
) -> None:
    _, client = source
    summary = export_shard(client, SHARD, str(tmp_path / "out"), rows_per_file=16)
    damage(Path(summary.folder) / "part-00001.parquet")  # the first part imports before the damage is met
    with pytest.raises(error, match=match):
        import_shard(summary.folder, target)
    with pytest.raises(NotFoundError):
        target.get_shard(SHARD)
    assert target.list_shards() == []


def test_an_import_over_a_shard_with_other_contents_is_refused(
    tmp_path: Path, source: tuple[ServerThread, CacheClient], target: CacheClient
) -> None:
    _, client = source
    summary = export_shard(client, SHARD, str(tmp_path / "out"))
    fill(target, SHARD, MANIFEST, make_records(2, seed=9))
    with pytest.raises(ValueError, match="sealed, with other contents"):
        import_shard(summary.folder, target)
    assert len(stored(target, SHARD)) == 2
    copy = import_shard(summary.folder, target, shard=8)  # under another number
    assert stored(target, 8) == stored(client, SHARD)
    assert copy.shard == 8


def test_the_cli_exports_and_imports(
    tmp_path: Path,
    source: tuple[ServerThread, CacheClient],
    target: CacheClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, client = source
    out = str(tmp_path / "out")
    assert cli.main(["export", str(SHARD), "--to", out, "--server", server.address, "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert (exported["shard"], exported["sequences"], exported["files"]) == (SHARD, 39, 1)
    (address,) = target.addresses
    assert cli.main(["import", out, "--server", address]) == 0
    assert "39 records stored" in capsys.readouterr().out
    assert stored(target, SHARD) == stored(client, SHARD)
    assert cli.main(["export", str(SHARD), "--to", out, "--server", server.address]) == 2  # already exported
    assert "already holds an export" in capsys.readouterr().err
    assert cli.main(["import", str(tmp_path / "nothing"), "--server", address]) == 2
    assert "no complete shard export" in capsys.readouterr().err
    assert cli.main(["export", "3", "--to", out, "--server", "127.0.0.1:1", "--timeout", "2"]) == 1


def test_positions_in_the_marker_match_the_rows(tmp_path: Path, source: tuple[ServerThread, CacheClient]) -> None:
    _, client = source
    summary = export_shard(client, SHARD, str(tmp_path / "out"), rows_per_file=7)
    marker = json.loads((Path(summary.folder) / MARKER).read_text())
    table = pq.read_table(part_files(summary.folder))
    assert marker["positions"] == summary.positions == pc.sum(pc.list_value_length(table["input_ids"])).as_py()
    assert [p["rows"] for p in marker["parts"]] == [7, 7, 7, 7, 7, 4]
    assert marker["parts"][1]["first_seq"] == 17 + 1  # seqs 10..16, then 18..24 (17 is missing)


def test_the_cli_reaches_s3_through_the_environment(
    source: tuple[ServerThread, CacheClient],
    target: CacheClient,
    s3_endpoint: str,
    s3_bucket: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As a user runs it: credentials and the endpoint in AWS_* variables, no --storage-options."""
    server, client = source
    bucket, _ = s3_bucket
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["export", str(SHARD), "--to", f"{bucket}/cli", "--server", server.address]) == 0
    assert f"at {bucket}/cli/shard-0000000003" in capsys.readouterr().out
    (address,) = target.addresses
    assert cli.main(["import", f"{bucket}/cli", "--server", address, "--shard", "6"]) == 0
    assert stored(target, 6) == stored(client, SHARD)
