"""The benchmarks' run folders (``bench.run_folder``): gone after a run that went well, kept and
named on stderr after one that failed, so that its server.log can be read and nothing else stays."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench import run_folder  # scripts/ is not a package: on sys.path above


def test_a_run_that_ends_well_leaves_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with run_folder("skbtest") as folder:
        assert folder.is_dir() and folder.parent == Path("/tmp") and folder.name.startswith("skbtest")
        (folder / "run").mkdir()
        (folder / "server.log").write_text("skald serving\n")
    assert not folder.exists()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("exc", "why"),
    [(RuntimeError("boom"), "failed"), (SystemExit(1), "failed"), (KeyboardInterrupt(), "interrupted")],
)
def test_a_failed_run_keeps_its_folder_names_it_and_raises_on(
    exc: BaseException, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path()
    try:
        with pytest.raises(type(exc)) as raised, run_folder("skbtest", "bench test") as folder:
            (folder / "server.log").write_text("Traceback: boom\n")
            raise exc
        assert raised.value is exc
        assert (folder / "server.log").read_text() == "Traceback: boom\n"
        assert capsys.readouterr().err == f"bench test: kept {folder} (server.log) for the {why} run\n"
    finally:
        if folder.name.startswith("skbtest"):
            shutil.rmtree(folder, ignore_errors=True)


def test_exit_status_zero_is_a_good_end_and_an_empty_folder_is_never_kept(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit), run_folder("skbtest") as folder:
        (folder / "server.log").write_text("done\n")
        raise SystemExit(0)
    assert not folder.exists()
    with pytest.raises(RuntimeError), run_folder("skbtest") as empty:
        raise RuntimeError("before anything was written")
    assert not empty.exists()
    assert capsys.readouterr().err == ""


def test_keep_keeps_it_after_a_good_run_too(capsys: pytest.CaptureFixture[str]) -> None:
    with run_folder("skbtest", keep=True) as folder:
        (folder / "turns.wav").write_bytes(b"RIFF")
    try:
        assert (folder / "turns.wav").is_file()
        assert capsys.readouterr().err == f"bench: kept {folder} (turns.wav) as asked\n"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
