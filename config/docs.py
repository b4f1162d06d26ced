"""docs/configuration.md, generated: every key of ``config/default.toml`` with its default, what
it accepts, its environment variable, whether it changes live, and what it does.

``python -m config.docs`` writes the file; ``python -m config.docs --check`` exits non-zero when
the file differs from what the sources give (``tests/test_config_docs.py`` does the same). The
sources are ``default.toml`` (values and their comments) and ``config.settings`` (types,
ranges, choices, ``ENV_ALIASES``, ``LIVE_KEYS``); nothing is written by hand in the table, so the
guide cannot drift from the code.

What a key does is its comment in ``default.toml``: the comment on its line, else the comment
block just above the run of keys it belongs to (``[dsp]``'s pause lengths share one), else the
same key's comment in a sibling table (``[actors.narrative]`` reads ``[actors.prelude]``'s). A key
with none of these is an error that names it: a key is not added without saying what it does.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import DEFAULT_FILE, ENV_ALIASES, LIVE_KEYS, allowed, env_name, setting_keys

ROOT = Path(__file__).resolve().parent.parent
DOC_FILE = ROOT / "docs" / "configuration.md"

#: What the string keys checked by meaning (``config.settings._validated``) accept, in its words.
_MEANING: dict[str, str] = {
    "audio.sink": "device, null or wav:PATH",
    "audio.latency": '"low", "high" or seconds between 0.001 and 2',
    "audio.rate": "0 or an integer between 16000 and 24000",
    "supervisor.control_endpoint": '"" or a ZeroMQ endpoint (ipc:///path, tcp://127.0.0.1:5555)',
}
#: Checks across keys (``config.settings._validated`` and the GPU resolution), by key.
_ACROSS: dict[str, str] = {
    "ring.max_fill_s": "at most ring.capacity_s",
    "chunker.target_min_s": "hard_min_s <= target_min_s <= target_max_s <= hard_max_s",
    "chunker.target_max_s": "hard_min_s <= target_min_s <= target_max_s <= hard_max_s",
    "chunker.hard_min_s": "hard_min_s <= target_min_s <= target_max_s <= hard_max_s",
    "chunker.hard_max_s": "hard_min_s <= target_min_s <= target_max_s <= hard_max_s",
    "chunker.first_chunk_s": "at most first_chunk_max_s",
    "prebuffer.low_water_s": "below start_s and resume_s (or 0)",
    "gpu.util_target_low": "-1 or below the band's high end",
    "gpu.util_target_high": "-1 or above the band's low end",
    "gpu.vram_limit_gb": "-1 (from the tier) or at least 0.1",
}

_SECTION = re.compile(r"^\[([\w.]+)\]\s*(?:#.*)?$")
_KEY = re.compile(r"^(\w+)\s*=\s*(.+?)\s*$")


class UndocumentedKey(ValueError):
    """A key of default.toml has no comment that says what it does."""


@dataclass
class Section:
    name: str
    note: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # key -> what it does


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside a string is part of the value."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def read_sections(path: Path = DEFAULT_FILE) -> list[Section]:
    """The tables of ``path`` in order, each with its note and what each key does."""
    sections: list[Section] = []
    block: list[str] = []  # comment lines since the last blank line or key
    run_block: list[str] = []  # the block above the current run of keys
    current: Section | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            block, run_block = [], []
            continue
        if line.startswith("#"):
            block.append(line.lstrip("#").strip())
            continue
        header = _SECTION.match(line)
        if header:
            current = Section(header.group(1), note=list(block) if sections else [])
            sections.append(current)
            block, run_block = [], []
            continue
        key = _KEY.match(line)
        if key is None or current is None:
            continue
        _value, comment = _split_comment(key.group(2))
        if block and comment:
            current.note.extend(block)  # a comment above a key that has its own: about the section
        elif block:
            run_block = block
        block = []
        current.keys[key.group(1)] = comment or " ".join(run_block)
    for section in sections:
        for name, what in section.keys.items():
            if what:
                continue
            parent = section.name.rsplit(".", 1)[0]
            sibling = next(
                (s.keys.get(name, "") for s in sections if s is not section and s.name.rsplit(".", 1)[0] == parent),
                "",
            )
            if not sibling:
                raise UndocumentedKey(
                    f"{path}: {section.name}.{name} has no comment saying what it does (add one on its line)"
                )
            section.keys[name] = sibling
    return sections


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(path: Path = DEFAULT_FILE) -> str:
    """The whole of docs/configuration.md."""
    sections = read_sections(path)
    with path.open("rb") as fh:
        defaults = tomllib.load(fh)
    known = set(setting_keys())
    aliases = {key: var for var, key in ENV_ALIASES.items()}
    out = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m config.docs` from config/default.toml and config/settings.py: edit those, then",
        "     run it again. tests/test_config_docs.py fails when this file and its sources disagree. -->",
        "",
        "Every setting, where it comes from and whether a running server takes a new value.",
        "",
        "* **Where values come from**, later wins: `config/default.toml` (the defaults below), a file",
        "  given with `skald --config FILE` (same tables, only the keys you change), an environment",
        "  variable `SKALD_<SECTION>_<KEY>` (the *environment* column), then command-line flags.",
        "* **Bad values** stop start-up with one line naming the key, the value, where it came from and",
        "  what is allowed, e.g.",
        "  `skald: config error: audio.blocksize = 5000 (from SKALD_AUDIO_BLOCKSIZE): must be between 64 and 1024`.",
        "* **Live keys** (*live* = yes) change on a running `skald serve` without a restart:",
        "  `skald config set prebuffer.start_s 1.0`, or edit the `--config` file and send the server",
        "  `SIGHUP` (`kill -HUP <pid>`). Both validate exactly as start-up does, apply to the next request",
        "  (the pre-buffer: to the next start of playback; the GPU band and log level: at once) and publish",
        "  a `config_changed` event. `skald config get [KEY]` prints the values in force, each marked",
        "  `[live]` or `[restart]`, with where it came from. `skald config set` refuses every other key with",
        "  a message that says a restart is needed; a re-read file that changes one keeps the old value",
        "  and names the key in the event's `restart_needed`. SIGHUP re-reads the file, the environment",
        "  and the flags the server was started with, so a value set with `skald config set` and not in",
        "  the file goes back to the file's.",
        "",
        "In the tables: *allowed* is what start-up checks (ranges are inclusive); `-1` on a GPU knob",
        "means \"from the GPU tier\" ([gpu.md](gpu.md)).",
    ]
    for section in sections:
        out += ["", f"## [{section.name}]", ""]
        if section.note:
            out += [" ".join(section.note), ""]
        out += ["| key | default | allowed | environment | live | what it does |", "|---|---|---|---|---|---|"]
        node: object = defaults
        for part in section.name.split("."):
            node = node[part]  # type: ignore[index]
        assert isinstance(node, dict)
        for name, what in section.keys.items():
            dotted = f"{section.name}.{name}"
            if dotted not in known:
                raise UndocumentedKey(f"{path}: {dotted} is not a setting config.settings knows")
            rule = _MEANING.get(dotted) or allowed(dotted)
            if dotted in _ACROSS:
                rule += f"; {_ACROSS[dotted]}"
            env = f"`{env_name(dotted)}`" + (f", `{aliases[dotted]}`" if dotted in aliases else "")
            live = "yes" if dotted in LIVE_KEYS else "restart"
            out.append(
                f"| `{name}` | `{_cell(_toml_value(node[name]))}` | {_cell(rule)} | {env} | {live} | {_cell(what)} |"
            )
    missing = known - {f"{s.name}.{k}" for s in sections for k in s.keys}
    if missing:
        raise UndocumentedKey(f"{path}: settings missing from it: {', '.join(sorted(missing))}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        if not DOC_FILE.is_file() or DOC_FILE.read_text(encoding="utf-8") != text:
            print(f"{DOC_FILE} is out of date: run `python -m config.docs`", file=sys.stderr)
            return 1
        return 0
    DOC_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
