"""docs/configuration.md is generated from config/default.toml and config/settings.py
(``python -m config.docs``) and must match them: a key added without documentation fails here."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from config.docs import DOC_FILE, UndocumentedKey, render
from config.settings import DEFAULT_FILE, LIVE_KEYS, setting_keys
from tests.conftest import ROOT


def _rows(text: str) -> dict[str, list[str]]:
    """The doc's table rows by dotted key: [default, allowed, environment, live, what]."""
    rows: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        header = re.match(r"^## \[([\w.]+)\]$", line)
        if header:
            section = header.group(1)
        elif line.startswith("| `") and section:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[f"{section}.{cells[0].strip('`')}"] = cells[1:]
    return rows


def test_the_committed_guide_is_what_the_sources_give() -> None:
    assert DOC_FILE.read_text(encoding="utf-8") == render(), "docs/configuration.md is stale: python -m config.docs"
    check = subprocess.run([sys.executable, "-m", "config.docs", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_key_has_its_default_range_env_and_liveness() -> None:
    rows = _rows(DOC_FILE.read_text(encoding="utf-8"))
    assert set(rows) == set(setting_keys())
    with DEFAULT_FILE.open("rb") as fh:
        defaults = tomllib.load(fh)
    blocksize = ["`128`", "an integer between 64 and 1024", "`SKALD_AUDIO_BLOCKSIZE`", "restart"]
    assert rows["audio.blocksize"][:4] == blocksize
    assert rows["prebuffer.start_s"][3] == "yes" and rows["gpu.prebuffer_s"][2].endswith("`SKALD_PREBUFFER_S`")
    for key, (default, _allowed, env, live, what) in rows.items():
        section, name = key.rsplit(".", 1)
        node = defaults
        for part in section.split("."):
            node = node[part]
        assert default.strip("`").strip('"') == str(node[name]).lower().strip('"') or default == f'`"{node[name]}"`'
        assert env.startswith("`SKALD_") and live == ("yes" if key in LIVE_KEYS else "restart") and what


def test_a_key_added_without_documentation_fails(tmp_path: Path) -> None:
    source = DEFAULT_FILE.read_text(encoding="utf-8")
    undocumented = tmp_path / "default.toml"
    undocumented.write_text(source.replace("[prebuffer]\n", "[prebuffer]\nhold_s = 1.0\n", 1))
    with pytest.raises(UndocumentedKey, match=r"prebuffer\.hold_s has no comment saying what it does"):
        render(undocumented)
    # Documented in default.toml but unknown to config.settings: named too.
    commented = tmp_path / "commented.toml"
    commented.write_text(source.replace("[prebuffer]\n", "[prebuffer]\nhold_s = 1.0  # hold\n", 1))
    with pytest.raises(UndocumentedKey, match=r"prebuffer\.hold_s is not a setting config\.settings knows"):
        render(commented)
    # A changed comment changes the guide: the committed file would no longer match.
    reworded = tmp_path / "reworded.toml"
    reworded.write_text(source.replace("# seconds buffered before playback starts", "# buffered seconds", 1))
    assert render(reworded) != DOC_FILE.read_text(encoding="utf-8")
