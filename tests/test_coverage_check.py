"""scripts/coverage_check.py's verdicts on a coverage JSON report (the shape coverage.py writes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import coverage_check  # scripts/ is not a package: on sys.path above


def _report(covered_lines: int, statements: int, *, seed_missing: list[int] | None = None) -> dict[str, Any]:
    """Every seed module whole (one of them missing ``seed_missing``), the children measured."""
    full = {"num_statements": 10, "covered_lines": 10, "missing_lines": 0, "num_branches": 2,
            "covered_branches": 2, "missing_branches": 0}  # fmt: skip
    files: dict[str, Any] = {path: {"summary": dict(full), "missing_lines": [], "missing_branches": []}
                             for path in coverage_check.FULL_COVERAGE}  # fmt: skip
    if seed_missing:
        entry = files["shm/ring.py"]
        entry["summary"].update(covered_lines=10 - len(seed_missing), missing_lines=len(seed_missing))
        entry["missing_lines"] = seed_missing
    for path, function in coverage_check.CHILD_ONLY.items():
        files.setdefault(path, {"summary": dict(full)})["functions"] = {function: {"summary": {"covered_lines": 3}}}
    totals = {"num_statements": statements, "covered_lines": covered_lines, "num_branches": 100, "covered_branches": 90}
    return {"files": files, "totals": totals}


def test_overall_line_coverage_under_the_floor_is_a_shortfall_naming_the_figure() -> None:
    problems = coverage_check.shortfalls(_report(949, 1000), min_lines=95.0)
    assert problems == ["overall line coverage 94.90 % is under 95 % (51 of 1000 lines never ran)"]
    assert coverage_check.shortfalls(_report(950, 1000), min_lines=95.0) == []


def test_a_seed_module_line_missed_is_named_with_its_lines() -> None:
    (problem,) = coverage_check.shortfalls(_report(1000, 1000, seed_missing=[7, 8, 9]))
    assert problem.startswith("shm/ring.py (§1.4") and "missing 7-9" in problem


def test_main_fails_with_the_shortfall_and_passes_with_the_figures(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(coverage_check, "load_report", lambda: _report(940, 1000))
    assert coverage_check.main(["--min-lines", "95"]) == 1
    assert "overall line coverage 94.00 % is under 95 %" in capsys.readouterr().err
    assert coverage_check.main(["--min-lines", "90"]) == 0
    assert "overall 94.00 % of lines (floor 90 %), 90.00 % of branches" in capsys.readouterr().out
