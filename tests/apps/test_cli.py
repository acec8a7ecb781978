"""The `logitcache` command, run through its real entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from logitcache import __version__
from logitcache.apps.cli import main
from logitcache.client import NotFoundError
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, run_serve


def test_demo_help_lists_the_guided_run_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data-dir", "--grpc", "--http", "--quick", "--no-wait", "--no-progress"):
        assert flag in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grpc", "nonsense"], "expected host:port, got 'nonsense'"),
        (["--http", "off"], "the demo needs the viewer"),
    ],
)
def test_demo_bad_addresses_exit_2_with_a_message(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--quick", "--no-wait", "--data-dir", str(tmp_path / "demo"), *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_refuses_a_data_dir_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--no-wait", "--data-dir", str(tmp_path)]) == 2
    assert "holds files the demo did not make" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_arguments_exit_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "logitcache", "demo", "--quick", "--no-wait", "--grpc", "127.0.0.1:99999"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "expected host:port, got '127.0.0.1:99999'" in done.stderr


def _help(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``logitcache COMMAND --help`` in a fresh interpreter, which then lists the heavy modules it imported."""
    code = (
        "import sys\n"
        "from logitcache.apps.cli import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('torch', 'transformers', 'grpc', 'lmdb', 'fastapi', 'uvicorn')\n"
        "print('IMPORTED:', sorted(m for m in sys.modules if m.split('.')[0] in heavy and '.' not in m))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "250", **(env or {})},
    )


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        (
            ("teacher",),
            [
                "--seq-len SEQ_LEN positions per sequence T (default: 1024)",
                "(default: 8)",
                "(default: 50)",
                "--shard SHARD shard id of rank 0; rank r writes --shard + r (default: 0)",
                "--seed SEED",
                "(default: text)",
                "(default: uint16)",
                "(default: multinomial)",
            ],
        ),
        (("serve",), ["(default: 127.0.0.1:50051)", "(default: logitcache-data)", "(default: INFO)"]),
        (("shards", "ls"), ["(default: 10.0)", "LOGITCACHE_SERVER"]),
        (("demo",), ["(default: logitcache-demo-data)", "(default: 127.0.0.1:0)"]),
    ],
)
def test_every_help_shows_defaults_and_imports_nothing_heavy(command: tuple[str, ...], defaults: list[str]) -> None:
    done = _help(*command)
    out = " ".join(done.stdout.split())
    for default in defaults:
        assert default in out
    assert f"usage: logitcache {' '.join(command)}" in out
    assert "IMPORTED: []" in out  # no torch, transformers, grpc, lmdb, fastapi, uvicorn


def test_help_never_shows_the_token_from_the_environment() -> None:
    for command in (("teacher",), ("shards", "rm")):
        done = _help(*command, env={"LOGITCACHE_AUTH_TOKEN": "s3cret-value"})
        assert "LOGITCACHE_AUTH_TOKEN" in done.stdout
        assert "s3cret-value" not in done.stdout


def test_top_level_help_describes_the_project_and_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "sparse teacher distributions" in out
    assert "The ``logitcache`` command" not in out
    for command in ("serve", "verify", "teacher", "shards", "demo"):
        assert command in out
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"logitcache {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "usage", "hint"),
    [
        (
            ["teacher", "--model", "m", "--data", "d.bin", "--seq_len", "16"],
            "logitcache teacher",
            "--seq_len: did you mean --seq-len?",
        ),
        (["serve", "--data_dir", "x"], "logitcache serve", "--data_dir: did you mean --data-dir?"),
        (["shards", "rm", "3", "--froce"], "logitcache shards rm", "--froce: did you mean --force?"),
        (["shards", "rm", "3", "--forc"], "logitcache shards rm", "--forc: did you mean --force?"),  # no abbreviations
    ],
)
def test_a_misspelled_flag_names_the_closest_one_with_the_command_s_usage(
    argv: list[str], usage: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} ")
    assert hint in err


def _error_lines(stderr: str) -> list[str]:
    """stderr without the server's own log lines (``<date> <time> LEVEL name: ...``)."""
    return [line for line in stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d", line)]


def test_an_address_or_data_directory_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        grpc_taken = f"127.0.0.1:{server.port}"
        http_taken = f"127.0.0.1:{server.http_port}"
        done = run_serve("--data-dir", str(tmp_path / "other"), "--grpc", grpc_taken, "--http", "off")
        assert done.returncode == 2
        assert _error_lines(done.stderr) == [
            f"logitcache serve: cannot listen for gRPC on {grpc_taken}: Address already in use (another server "
            "is running there? pick another port, or 0 for any free one)"
        ]
        done = run_serve("--data-dir", str(tmp_path / "other"), "--grpc", "127.0.0.1:0", "--http", http_taken)
        assert done.returncode == 2
        [line] = _error_lines(done.stderr)
        assert line.startswith(f"logitcache serve: cannot listen for HTTP on {http_taken}: Address already in use")
        done = run_serve("--data-dir", str(tmp_path / "data"), "--grpc", "127.0.0.1:0", "--http", "off")
        assert done.returncode == 2
        [line] = _error_lines(done.stderr)
        assert (
            line
            == f"logitcache serve: {(tmp_path / 'data').resolve()} is in use by another logitcache server (or verify)"
        )
    finally:
        server.stop()


def test_expected_conditions_are_not_logged_at_info(tmp_path: Path) -> None:
    """A teacher's first run asks for a shard that does not exist yet: the server says nothing about it."""
    server = ServerProcess(tmp_path / "data")
    try:
        with server.client() as client:
            with pytest.raises(NotFoundError):
                client.get_shard(0)
            with pytest.raises(NotFoundError):
                client.list_seqs(0)
            client.create_shard(0, MANIFEST)
        server.wait_for_log("shard 0 created")  # logged after the NOT_FOUNDs were answered
        assert not [line for line in server.log if "NOT_FOUND" in line or "does not exist" in line]
    finally:
        server.stop()
