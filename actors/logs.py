"""Logging for every skald process: text for people at a terminal, JSON lines for machines.

``configure_logging(level, fmt, actor)`` runs once in each process: the CLI (``actor="cli"``),
the supervisor's process (``"supervisor"``) and every actor (its role, from ``ActorSpec``), so
one setting (``log.format`` / ``SKALD_LOG_FORMAT`` / ``--log-format``) switches them all.

* ``text`` (the default): ``12:00:01.234 INFO skald.supervisor[4242]: message``.
* ``json``: one object per line on stderr, written by ``python-json-logger``, with ``timestamp``
  (ISO 8601, UTC), ``level``, ``actor``, ``pid``, ``logger``, ``event`` (what happened, e.g.
  ``request_finished``; ``log`` for a plain line), ``message``, ``request_id`` when the line is
  about a request, and any other ``extra`` fields of the call.

``log_event`` is the supervisor's listener on its own published events: one line per request
milestone (accepted, playback started, finished; chunks at debug), each with its ``request_id``
and the event's figures as fields.

Levels go stepwise (``-v``: one step more verbose): warning -> info -> debug.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
from pythonjsonlogger.json import JsonFormatter

from actors import wire

LOG_FORMATS = ("text", "json")
#: From quiet to verbose; each ``-v`` moves one step right.
LEVELS = ("error", "warning", "info", "debug")
TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s[%(process)d]: %(message)s"

log = logging.getLogger("skald.events")


def level_number(name: str) -> int:
    """``"info"`` -> ``logging.INFO``; raises ``ValueError`` naming the allowed levels."""
    if name.lower() not in LEVELS:
        raise ValueError(f"log level {name!r}: must be one of {', '.join(LEVELS)}")
    return int(logging.getLevelName(name.upper()))


def stepped_level(base: str, verbosity: int) -> int:
    """``base`` made ``verbosity`` steps more verbose (``-v`` once: warning -> info)."""
    level_number(base)  # a clear error for a level that is no level
    index = min(LEVELS.index(base.lower()) + max(0, verbosity), len(LEVELS) - 1)
    return level_number(LEVELS[index])


class _ProcessFields(logging.Filter):
    """Puts the process's ``actor`` and a default ``event`` on every record the handler sees."""

    def __init__(self, actor: str) -> None:
        super().__init__()
        self.actor = actor

    def filter(self, record: logging.LogRecord) -> bool:
        record.actor = self.actor
        if not hasattr(record, "event"):
            record.event = "log"
        return True


def json_formatter() -> logging.Formatter:
    """The JSON lines formatter: fixed fields first, then the call's ``extra`` fields."""
    return JsonFormatter(
        "{levelname}{actor}{process}{name}{event}{message}",
        style="{",
        rename_fields={"levelname": "level", "process": "pid", "name": "logger"},
        timestamp=True,
        json_ensure_ascii=False,
    )


def configure_logging(level: int, fmt: str = "text", actor: str = "cli") -> None:
    """Send this process's log records to stderr in ``fmt`` (``text`` or ``json``) from ``level``
    up, replacing any handler a previous call installed. Python warnings become records too, so
    in JSON mode stderr holds JSON lines only."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_ProcessFields(actor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


# ---------------------------------------------------------------------------- request events

_SPAN_FIELDS = frozenset(wire.ChunkSpan.__struct_fields__)
# Not copied onto the record: the version, long texts, and names the record itself owns.
_SKIPPED = frozenset({"v", "text", "source", "message", "actor", "t_accepted"}) | _SPAN_FIELDS


def _describe(msg: wire.Message) -> tuple[int, str] | None:
    """(level, message) of an event worth a line, or None."""
    if isinstance(msg, wire.Accepted):
        return logging.INFO, f"request {msg.request_id} accepted"
    if isinstance(msg, wire.PlaybackStarted):
        return logging.INFO, f"request {msg.request_id}: playback started, TTFA {msg.ttfa_ms:.0f} ms"
    if isinstance(msg, wire.RequestFinished):
        return logging.INFO, (
            f"request {msg.request_id} {msg.status}: {msg.audio_s:.2f} s of audio, {msg.underruns} underruns"
            + (f" ({msg.reason})" if msg.reason else "")
        )
    if isinstance(msg, wire.Underrun):
        return logging.WARNING, f"request {msg.request_id}: underrun #{msg.count} ({msg.frames} frames missing)"
    if isinstance(msg, wire.Silenced):
        return logging.INFO, f"request {msg.request_id}: silenced after cancel"
    if isinstance(msg, wire.ChunkPlanned):
        return logging.DEBUG, f"request {msg.request_id}: chunk {msg.index} planned ({msg.est_s:.2f} s)"
    if isinstance(msg, wire.ChunkSynthesized):
        return logging.DEBUG, (
            f"request {msg.request_id}: chunk {msg.index} synthesized, {msg.dur_s:.2f} s of audio in "
            f"{msg.synth_ms:.0f} ms ({msg.engine}), waited {msg.wait_ms:.0f} ms for ring space"
        )
    if isinstance(msg, wire.Error) and msg.kind not in ("actor_crashed", "actor_failed"):  # logged where noticed
        return logging.WARNING, f"error [{msg.kind}] from {msg.actor or 'supervisor'}: {msg.message}"
    return None


def log_event(msg: wire.Message) -> None:
    """Supervisor listener: one log line per request milestone, with the event's fields."""
    described = _describe(msg)
    if described is None:
        return
    level, text = described
    if not log.isEnabledFor(level):
        return
    extra: dict[str, Any] = {
        k: v for k, v in msgspec.structs.asdict(msg).items() if k not in _SKIPPED and v not in ("", None)
    }
    extra["event"] = msg.KIND.decode()
    if isinstance(msg, wire.Error) and msg.actor:
        extra["error_actor"] = msg.actor
    log.log(level, text, extra=extra)
