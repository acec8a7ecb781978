"""CacheClient with DNS targets (a headless Service's name) and reads that fail over between sealed copies.

The servers are real: in-process ``ServerThread``s where only discovery is tested, ``ServerProcess``
subprocesses where one is killed (SIGKILL) in the middle of an epoch. DNS is the system resolver
(``localhost``), except in the one test that needs a name whose answer grows: there a table stands in
for the resolver, since this machine's hosts file is not the test's to edit.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from logitcache.client import CacheClient, UnavailableError
from logitcache.core import records
from logitcache.server.runner import ServerThread
from logitcache.server.settings import ServerSettings
from logitcache.targets.sparse import SparseTargets
from logitcache.testing import ServerProcess
from logitcache.training import SparseKDLoader
from tests.server.helpers import MANIFEST, make_records, running_server, self_signed_cert


def _localhost_ips() -> set[str]:
    return {str(info[4][0]) for info in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)}


@contextmanager
def _server_on(data_dir: Path, address: str) -> Iterator[ServerThread]:
    """A server on exactly ``address`` (an address another server holds the port of, on another IP);
    the test is skipped if it cannot be bound."""
    server = ServerThread(ServerSettings(data_dir=data_dir, grpc=address, http="off"))
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {address}: {exc}")
    try:
        yield server
    finally:
        server.stop(0)


def _fill(client: CacheClient, shard: int, items: list[tuple[int, bytes]], *, seal: bool = True) -> None:
    client.create_shard(shard, MANIFEST)
    client.write(shard, items)
    if seal:
        client.seal_shard(shard)


# ----------------------------------------------------------------- discovery


def test_a_dns_target_finds_the_server_its_name_resolves_to(tmp_path: Path) -> None:
    assert "127.0.0.1" in _localhost_ips()
    with running_server(tmp_path) as (server, direct):
        _fill(direct, 0, make_records(3, seed=1))
        here = f"127.0.0.1:{server.port}"
        with CacheClient(f"dns:///localhost:{server.port}", timeout=10, retries=1, backoff=0.01) as client:
            assert here in client.addresses
            assert client.targets == [f"dns:///localhost:{server.port}"]
            assert client.locate(0) == here
            assert [seq for seq, _ in client.read(0, ranges=[(0, 3)])] == [0, 1, 2]
            assert client.get_shard(0).sequences == 3
            clone = pickle.loads(pickle.dumps(client))  # as DataLoader workers get it
            assert clone.get_shard(0).sequences == 3
            clone.close()


@pytest.mark.skipif("::1" not in _localhost_ips(), reason="localhost does not resolve to ::1 here (127.0.0.1 only)")
def test_a_server_added_under_the_name_is_found_by_refresh(tmp_path: Path) -> None:
    with running_server(tmp_path / "a") as (a, direct):
        _fill(direct, 0, make_records(3, seed=1))
        with CacheClient(f"dns:///localhost:{a.port}", timeout=10, retries=1, backoff=0.01) as client:
            assert client.refresh() == {0: f"127.0.0.1:{a.port}"}  # [::1]:port does not answer yet
            with _server_on(tmp_path / "b", f"[::1]:{a.port}") as b:
                with CacheClient(b.address, timeout=10) as direct_b:
                    _fill(direct_b, 1, make_records(2, seed=2, start=10))
                assert client.refresh() == {0: f"127.0.0.1:{a.port}", 1: f"[::1]:{a.port}"}
                assert [seq for seq, _ in client.read(1, seqs=[11, 10])] == [11, 10]


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The A records of made-up names, as a DNS server would give them (other names resolve as usual)."""
    table: dict[str, list[str]] = {}
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in table:
            return resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in reversed(table[host])]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def test_a_grown_set_is_found_without_a_client_change(tmp_path: Path, answers: dict[str, list[str]]) -> None:
    answers["logitcache.test"] = ["127.0.0.1"]
    with running_server(tmp_path / "a") as (a, _):
        first, second = f"127.0.0.1:{a.port}", f"127.0.0.2:{a.port}"
        with CacheClient(f"dns:///logitcache.test:{a.port}", timeout=10, retries=1, backoff=0.01) as client:
            for shard in (0, 1):  # one server: both are placed on it
                _fill(client, shard, make_records(2, seed=shard, start=10 * shard))
            assert client.addresses == [first]
            with _server_on(tmp_path / "b", second):
                answers["logitcache.test"].append("127.0.0.2")  # the StatefulSet grew
                with CacheClient(second, timeout=10) as direct_b:
                    _fill(direct_b, 5, make_records(2, seed=5, start=50))
                assert client.refresh() == {0: first, 1: first, 5: second}
                assert client.addresses == [first, second]  # sorted, whatever order the resolver answered in
                assert [seq for seq, _ in client.read(5, ranges=[(50, 52)])] == [50, 51]
                # existing shards stay where they are; a new one is placed by modulo over the grown list
                client.create_shard(3, MANIFEST)
                assert client.locate(3) == second
                assert client.locate(1) == first


def test_a_restarted_server_is_found_at_its_new_address_by_the_retry(
    tmp_path: Path, answers: dict[str, list[str]]
) -> None:
    answers["logitcache.test"] = ["127.0.0.1"]
    with running_server(tmp_path) as (before, direct):  # the pod before it restarts
        _fill(direct, 0, make_records(3, seed=6))
        port = before.port
        client = CacheClient(f"dns:///logitcache.test:{port}", timeout=10, retries=2, backoff=0.01)
        assert client.locate(0) == f"127.0.0.1:{port}"
    # it restarts on its volume with a new IP: the name's record changes, the client is not told
    answers["logitcache.test"] = ["127.0.0.2"]
    with client, _server_on(tmp_path, f"127.0.0.2:{port}"):
        assert [seq for seq, _ in client.read(0, seqs=[2, 0])] == [2, 0]
        assert client.locate(0) == f"127.0.0.2:{port}"


def test_a_name_that_does_not_resolve_is_unavailable_at_once() -> None:
    client = CacheClient("dns:///no-such-server.invalid:50051", timeout=5, retries=1, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(UnavailableError, match=r"cannot resolve dns:///no-such-server\.invalid:50051"):
        client.get_shard(0)
    with pytest.raises(UnavailableError, match=r"no-such-server\.invalid"):
        client.refresh()
    assert time.monotonic() - started < 12  # the resolver's answer, or the client's own bound of 5 s each
    client.close()


def test_a_name_whose_servers_do_not_answer_is_all_servers_down() -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused, and no one else gets the port
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with CacheClient(f"dns:///localhost:{port}", timeout=5, retries=1, backoff=0.01) as client:
            with pytest.raises(UnavailableError):
                client.get_shard(0)
            with pytest.raises(UnavailableError):
                client.refresh()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_with_tls_a_resolved_address_is_verified_against_the_name(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path, "DNS:localhost")
    with running_server(tmp_path / "data", tls_cert=cert, tls_key=key) as (server, _):
        with CacheClient(f"dns:///localhost:{server.port}", tls_root_cert=cert, timeout=10) as secure:
            secure.create_shard(0, MANIFEST, address=f"127.0.0.1:{server.port}")
            assert secure.get_shard(0).shard == 0
        # the same address, given as such: the certificate names no IP address
        by_ip = CacheClient(f"127.0.0.1:{server.port}", tls_root_cert=cert, timeout=5, retries=0)
        with by_ip, pytest.raises(UnavailableError):
            by_ip.get_shard(0)


@pytest.mark.parametrize(
    "target", ["dns://8.8.8.8/logitcache:50051", "dns:///logitcache", "dns:///logitcache:0", "dns:///[::1]", "dns://x"]
)
def test_a_malformed_dns_target_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="expected dns:///name:port"):
        CacheClient(target)


# ----------------------------------------------------------------- copies


def test_only_identical_sealed_copies_are_read_from(tmp_path: Path) -> None:
    items = make_records(4, seed=3)
    with running_server(tmp_path / "a") as (_, direct_a), running_server(tmp_path / "b") as (_, direct_b):
        _fill(direct_a, 1, items, seal=False)  # unsealed on both: the first holder only
        _fill(direct_b, 1, items, seal=False)
        _fill(direct_a, 2, items)  # sealed on both, but B's lacks a record: not a copy
        _fill(direct_b, 2, items[:3])
        _fill(direct_a, 3, items)  # identical sealed copies
        _fill(direct_b, 3, items)
        _fill(direct_b, 4, items)  # B only
        first, second = direct_a.address, direct_b.address
        with CacheClient([first, second], timeout=10) as client:
            assert client.refresh() == {1: first, 2: first, 3: first, 4: second}
            assert client.holders(1) == [first]
            assert client.holders(2) == [first]
            assert client.holders(3) == [first, second]
            assert client.holders(4) == [second]
            assert client.locate(3) == first  # writes go to the first holder


def _copies(tmp_path: Path, items: list[tuple[int, bytes]]) -> tuple[ServerProcess, ServerProcess]:
    """Two server processes holding identical sealed copies of shard 0."""
    servers: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            servers.append(ServerProcess(tmp_path / name, http=False))
            with servers[-1].client() as direct:
                _fill(direct, 0, items)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers[0], servers[1]


def test_a_read_stream_moves_to_the_other_copy_when_its_server_dies(tmp_path: Path) -> None:
    a, b = _copies(tmp_path, make_records(30, seed=4))
    try:
        with CacheClient([a.address, b.address], timeout=10, retries=2, backoff=0.01) as client:
            assert client.holders(0) == [a.address, b.address]
            stream = client.read(0, ranges=[(0, 10), (12, 30)], max_message_bytes=1)  # a message per record
            got = [next(stream)[0] for _ in range(5)]
            a.stop()  # SIGKILL in the middle of the stream
            got += [seq for seq, _ in stream]
            assert got == [*range(10), *range(12, 30)]
            assert client.holders(0) == [b.address, a.address]  # the one that answered, first
            assert client.stats(b.address).records_read == 23
            assert client.list_seqs(0).tolist() == list(range(30))
    finally:
        a.stop()
        b.stop()


def test_an_epoch_completes_from_the_other_copy_when_a_server_is_killed_mid_epoch(tmp_path: Path) -> None:
    items = make_records(40, seed=5)
    stored = dict(items)
    a, b = _copies(tmp_path, items)
    try:
        with CacheClient([a.address, b.address], timeout=10, retries=2, backoff=0.01) as client:
            # prefetch and read-ahead of one batch: most of the epoch is read after the kill
            loader = SparseKDLoader(client, [0], batch_size=2, seed=0, prefetch=1, read_ahead=1)
            seen: list[int] = []
            for index, batch in enumerate(loader):
                if index == 0:
                    a.stop()  # SIGKILL once the first batch is here
                k = batch.target_ids.shape[2]
                for row, seq in enumerate(batch.seqs.tolist()):
                    record = records.decode(stored[seq])
                    ids, probs = SparseTargets.from_record(record).to_padded(width=k)
                    assert torch.equal(batch.input_ids[row], torch.from_numpy(record.input_ids))
                    assert torch.equal(batch.target_ids[row], ids)
                    torch.testing.assert_close(batch.target_probs[row], probs)
                    seen.append(seq)
            assert sorted(seen) == list(range(40))  # each once
            assert a.proc.poll() is not None
            # B served what was not read before the kill: all but the few batches the loader had read ahead
            assert client.stats(b.address).records_read >= 20
    finally:
        a.stop()
        b.stop()
