"""Fault injection on tiny twins: each case runs the real command line on bad input or a fault and checks the three
things issue 16 asks of every failure: the exit code, one line naming the culprit, and nothing left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from anima_probe.cli import main


@pytest.fixture
def fails(capsys):
    """fails(argv, code=2) -> the one stderr line of a command that must fail with `code`, no traceback."""

    def check(argv: list[str], code: int = 2) -> str:
        try:
            got = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own usage errors
            got = exc.code
        err = capsys.readouterr().err.strip()
        assert got == code, err
        assert err.count("\n") == 0 and "Traceback" not in err, err
        return err

    return check


@pytest.fixture
def twin(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the session's tiny twin (net. prefix, VAE included), safe to damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "twin"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The current directory for the command: relative default outputs (results/) would land here."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)
