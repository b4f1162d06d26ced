"""Structured logs: JSON lines from every process of a real server, stepwise levels."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from actors import wire
from actors.logs import stepped_level
from tests.conftest import ROOT, server_env

SKALD = [sys.executable, "-m", "actors.cli"]
# The stage's actors (the HTTP gateway's two run only with --http).
ROLES = {role.value for role in wire.Role} - {wire.Role.WEB.value, wire.Role.TTS_RENDER.value}


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines at all"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    for record in parsed:
        for key in ("timestamp", "level", "actor", "pid", "event", "message"):
            assert key in record, (key, record)
    return parsed


def test_levels_go_one_step_per_v() -> None:
    assert stepped_level("warning", 0) == logging.WARNING
    assert stepped_level("warning", 1) == logging.INFO
    assert stepped_level("warning", 2) == logging.DEBUG
    assert stepped_level("warning", 7) == logging.DEBUG
    assert stepped_level("error", 1) == logging.WARNING
    with pytest.raises(ValueError, match="must be one of"):
        stepped_level("loud", 0)


@pytest.mark.slow
def test_serve_with_json_logs_from_the_environment_writes_json_lines_from_every_process(make_server) -> None:  # type: ignore[no-untyped-def]
    # Chunk 1 fails once (then its retry speaks it): the worker's own log line is about a request.
    server = make_server("--sink", "null", SKALD_LOG_FORMAT="json", SKALD_FAULT_INJECT="chunk=1,times=1")
    with server.client() as client:
        rid = client.speak("The torchlight flickers. Somewhere ahead, water drips. The air tastes of iron.")
        finished, _ = client.wait_for(rid, timeout_s=60)
    assert finished.status == "done"
    assert server.stop() == 0
    records = _json_lines(server.log())
    assert {r["actor"] for r in records} >= ROLES | {"supervisor"}
    assert len({r["pid"] for r in records}) >= 5  # the supervisor and four actor processes
    about_request = [r for r in records if r["event"] in ("accepted", "playback_started", "request_finished")]
    assert {r["event"] for r in about_request} == {"accepted", "playback_started", "request_finished"}
    assert all(r.get("request_id") == rid for r in about_request), about_request
    finished_line = next(r for r in about_request if r["event"] == "request_finished")
    assert finished_line["status"] == "done" and finished_line["level"] == "INFO"
    failed = [r for r in records if r["event"] == "chunk_failed"]
    assert len(failed) == 1 and failed[0]["actor"] == "tts_worker", failed
    assert failed[0]["request_id"] == rid and failed[0]["level"] == "WARNING"


@pytest.mark.slow
def test_speak_with_json_logs_keeps_stderr_json_only() -> None:
    out = subprocess.run(
        [*SKALD, "--log-format", "json", "-vv", "speak", "--sink", "null", "The door creaks open."],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=server_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    records = _json_lines(out.stderr)
    assert {r["actor"] for r in records} >= ROLES | {"supervisor"}
    assert any(r["level"] == "DEBUG" for r in records)  # -vv: two steps from warning
    result = next(r for r in records if r["event"] == "speak_finished")
    assert result["message"] == "done" and result["request_id"] and result["audio_seconds"] > 0.5
    chunks = [r for r in records if r["event"] == "chunk_synthesized"]
    assert chunks and all(r["request_id"] == result["request_id"] and "wait_ms" in r for r in chunks)


@pytest.mark.slow
def test_text_logs_stay_the_default_and_quiet() -> None:
    out = subprocess.run(
        [*SKALD, "speak", "--quiet", "--sink", "null", "The door creaks open."],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=server_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # Warning level and text: no log line at all, only the command's own summary.
    assert out.stderr.startswith("skald: done; TTFA"), out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
