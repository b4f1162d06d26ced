"""The coverage checks ``scripts/test`` runs after the suite, on the combined data of every process.

    python scripts/coverage_check.py               # fail unless the seed's modules are at 100 % line
                                                   # AND branch, and the actor processes were measured
    python scripts/coverage_check.py --min-lines 95  # and unless overall LINE coverage is >= 95 %
    python scripts/coverage_check.py --per-module  # the README's per-module table (Markdown)

The data is what pytest-cov combined from every process of the run (the config is
``[tool.coverage.*]`` in pyproject.toml: branch coverage, the production packages, every child
process measured). pytest's ``--cov-fail-under`` (scripts/test) checks coverage.py's total, which
with branch coverage on counts lines and branches together; this script checks the seed's own
figure, overall *line* coverage (§7.1, ``--min-lines``), and what a total cannot: the named
modules, and that the code which only runs in a child process counts (a run whose children went
unmeasured would still pass a lowered total).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The modules the seed names for 100 % line and branch coverage, each with the seed's section.
FULL_COVERAGE: dict[str, str] = {
    "actors/gpu/detect.py": "§1.1 tier classification and CPU-fallback detection",
    "actors/gpu/tiers.py": "§1.1/§1.2 tier classification and configuration",
    "actors/gpu/control.py": "§1.3 GPU memory management",
    "shm/ring.py": "§1.4 PCM FIFO (shared-memory ring)",
    "actors/text/chunker.py": "§1.5 semantic chunker",
    "actors/text/plan.py": "§1.5 semantic chunker (chunk plan)",
    "actors/text/cuts.py": "§1.5 semantic chunker (cut points)",
    "actors/text/ranking.py": "§1.5 semantic chunker (cut ranking)",
    "actors/text/speaking_rate.py": "§1.5 semantic chunker (speaking rate)",
    "actors/audio/prebuffer.py": "§1.6 pre-buffer manager",
    "actors/audio/pcm.py": "§1.8 format conversion (PCM)",
    "actors/audio/output.py": "§1.8 format conversion (float32 -> int16, upsampling)",
    "actors/audio/resample.py": "§1.8 format conversion (resampling)",
    "actors/web/encode.py": "§1.8 format conversion (HTTP response encoders)",
    "config/settings.py": "§1.13 configuration",
}

# Functions that run only inside a child process: the actors' entry points (multiprocessing
# "spawn" children of the supervisor) and `skald serve` (the tests' subprocess.Popen). Lines of
# theirs counted as run prove that the children were measured and their data combined.
CHILD_ONLY: dict[str, str] = {
    "actors/tts_worker.py": "run_tts_worker_process",
    "actors/audio_consumer.py": "run_audio_consumer_process",
    "actors/cli/__init__.py": "cmd_serve",
}


def load_report() -> dict[str, Any]:
    """The JSON report of the combined data (``[tool.coverage.run] data_file``)."""
    import coverage

    cov = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    data_file = Path(cov.config.data_file)
    if not data_file.is_absolute():
        data_file = ROOT / data_file
    if not data_file.is_file():
        sys.exit(f"coverage_check: no combined coverage data at {data_file}; run scripts/test first")
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out))
        report: dict[str, Any] = json.loads(out.read_text())
    return report


def _ranges(numbers: list[int]) -> str:
    """``[3, 4, 5, 9]`` as ``3-5, 9``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _pct(covered: int, total: int) -> float:
    return 100.0 * covered / total if total else 100.0


def overall_lines(report: dict[str, Any]) -> float:
    """Overall line coverage (%) of the run: the seed's §7.1 figure."""
    totals = report["totals"]
    return _pct(totals["covered_lines"], totals["num_statements"])


def shortfalls(report: dict[str, Any], min_lines: float = 0.0) -> list[str]:
    """One line per named module below 100 % line or branch coverage, per child-only function
    that no measured process ran, and one if overall line coverage is under ``min_lines`` %."""
    files = report["files"]
    problems: list[str] = []
    totals = report["totals"]
    overall = overall_lines(report)
    if overall < min_lines:
        problems.append(
            f"overall line coverage {overall:.2f} % is under {min_lines:g} % "
            f"({totals['num_statements'] - totals['covered_lines']} of {totals['num_statements']} lines never ran)"
        )
    for path, section in FULL_COVERAGE.items():
        entry = files.get(path)
        if entry is None:
            problems.append(f"{path} ({section}): not measured at all")
            continue
        s = entry["summary"]
        gaps = []
        if s["missing_lines"]:
            lines = _ranges(entry["missing_lines"])
            gaps.append(f"lines {_pct(s['covered_lines'], s['num_statements']):.1f} % (missing {lines})")
        if s["missing_branches"]:
            arcs = ", ".join(f"{a}->{'exit' if b < 0 else b}" for a, b in entry["missing_branches"])
            gaps.append(f"branches {_pct(s['covered_branches'], s['num_branches']):.1f} % (missing {arcs})")
        if gaps:
            problems.append(f"{path} ({section}): " + "; ".join(gaps))
    for path, function in CHILD_ONLY.items():
        summary = files.get(path, {}).get("functions", {}).get(function, {}).get("summary", {})
        if not summary.get("covered_lines"):
            problems.append(
                f"{path}:{function} runs only in a child process and no line of it was counted: "
                "the child processes were not measured ([tool.coverage.run] patch in pyproject.toml)"
            )
    return problems


def markdown_table(report: dict[str, Any]) -> str:
    """Every measured module: statements, line %, branches, branch %; the seed's section if named."""
    rows = [
        "| module | seed | statements | line % | branches | branch % |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for path in sorted(report["files"]):
        s = report["files"][path]["summary"]
        if not s["num_statements"]:
            continue  # empty __init__.py files
        seed = FULL_COVERAGE.get(path, "").split(" ", 1)[0]
        rows.append(
            f"| `{path}` | {seed} | {s['num_statements']} | {_pct(s['covered_lines'], s['num_statements']):.1f} "
            f"| {s['num_branches']} | {_pct(s['covered_branches'], s['num_branches']):.1f} |"
        )
    t = report["totals"]
    rows.append(
        f"| **total** | | {t['num_statements']} | {_pct(t['covered_lines'], t['num_statements']):.1f} "
        f"| {t['num_branches']} | {_pct(t['covered_branches'], t['num_branches']):.1f} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-module", action="store_true", help="print the per-module table as Markdown")
    parser.add_argument("--min-lines", type=float, default=0.0, metavar="PCT", help="overall line coverage floor")
    args = parser.parse_args(argv)
    report = load_report()
    if args.per_module:
        print(markdown_table(report))
        return 0
    problems = shortfalls(report, args.min_lines)
    for line in problems:
        print(f"coverage: {line}", file=sys.stderr)
    if problems:
        print(
            f"coverage: {len(problems)} shortfall(s): the seed's modules must be at 100 % line and branch "
            f"coverage (a line that cannot run here gets `# pragma: no cover` and a reason), the whole at "
            f">= {args.min_lines:g} % of lines",
            file=sys.stderr,
        )
        return 1
    totals = report["totals"]
    overall = overall_lines(report)
    print(
        f"coverage: overall {overall:.2f} % of lines (floor {args.min_lines:g} %), "
        f"{_pct(totals['covered_branches'], totals['num_branches']):.2f} % of branches; "
        f"the {len(FULL_COVERAGE)} seed modules are at 100 % line and branch; child processes measured"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
