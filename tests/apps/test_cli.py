"""The `logitcache` command, run through its real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from logitcache.apps.cli import main


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
