"""The orchestrator's command line against a real server: say, cancel, events, status, gpu."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from tests.conftest import ROOT, SKALD, server_env


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SKALD, *args], cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=timeout)


def test_say_events_cancel_and_status_from_the_command_line(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    run = ["--run-dir", str(server.run_dir)]
    events = subprocess.Popen(
        [*SKALD, "events", *run, "--idle-timeout", "20"],
        cwd=ROOT,
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert events.stdout is not None and events.stderr is not None
    published: list[dict[str, Any]] = []

    def read_until(pred: Callable[[dict[str, Any]], bool]) -> None:
        """Read the subscriber's lines until one satisfies ``pred`` (it exits after 20 s idle)."""
        assert events.stdout is not None
        while line := events.stdout.readline():
            published.append(json.loads(line))
            if pred(published[-1]):
                return
        raise AssertionError(f"the events stream ended first: {published}")

    try:
        # `skald events` says so on stderr once its subscription is live (the server answered it).
        while "subscribed to" not in (line := events.stderr.readline()):
            assert line, "skald events exited before subscribing"
        said = _cli("say", "The guard steps aside.", "--wait", "--json", *run)
        assert said.returncode == 0, said.stderr
        lines = said.stdout.strip().splitlines()
        rid = lines[0]
        kinds = [json.loads(line)["event"] for line in lines[1:]]
        assert kinds[0] == "accepted" and kinds[-1] == "request_finished", kinds
        assert {"chunk_planned", "playback_started", "chunk_synthesized"} <= set(kinds)
        finished = json.loads(lines[-1])
        assert finished["request_id"] == rid and finished["status"] == "done"

        long = _cli("say", "--file", str(ROOT / "config" / "samples" / "crypt.txt"), *run)
        assert long.returncode == 0, long.stderr
        long_id = long.stdout.strip()
        read_until(lambda e: e["event"] == "playback_started" and e["request_id"] == long_id)
        assert _cli("cancel", long_id, *run).returncode == 0
        bad = _cli("cancel", "no-such-request", *run)
        assert bad.returncode == 1 and "no request 'no-such-request'" in bad.stderr
        assert _cli("cancel", *run).returncode != 0  # neither an id nor --all
        status = json.loads(_cli("status", *run).stdout)
        assert status["requests"] == [] and status["gpu"]["tier"] == "CPU"
        malformed = _cli("say", *run, "--voice", "no-such-voice", "x")
        assert malformed.returncode == 0  # accepted at once; the worker reports the bad voice
        read_until(lambda e: e["event"] == "error" and "no-such-voice" in e["message"])
    finally:
        events.terminate()
        out, _err = events.communicate(timeout=10)
    published += [json.loads(line) for line in out.splitlines()]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for event in published:
        by_kind.setdefault(event["event"], []).append(event)
    assert any(e["request_id"] == rid for e in by_kind["request_finished"])
    cancelled = [e for e in by_kind["request_finished"] if e["request_id"] == long_id]
    assert cancelled and cancelled[0]["status"] == "cancelled"
    assert any(e["request_id"] == long_id for e in by_kind.get("silenced", []))
    errors = by_kind.get("error", [])
    assert any(e["kind"] == "bad_request" and e["actor"] == "supervisor" for e in errors), errors
    assert any(e["actor"] == "tts_worker" and "no-such-voice" in e["message"] for e in errors), errors


def test_gpu_command_reports_the_cpu_fallback_with_its_reason() -> None:
    out = _cli("gpu", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["gpus"] == [] and report["tier"] == "CPU"
    assert report["fallback_reason"]  # why: here, no NVIDIA driver
    assert set(report["config"]) >= {"parallel_streams", "prebuffer_s", "vram_limit_mb"}
    bad = _cli("gpu", "--gpu-profile", "turbo")
    assert bad.returncode != 0 and "turbo" in bad.stderr
    streams = subprocess.run(
        [*SKALD, "gpu", "--json"],
        cwd=ROOT,
        env=server_env(SKALD_PARALLEL_STREAMS="5"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert streams.returncode != 0 and "SKALD_PARALLEL_STREAMS" in streams.stderr + streams.stdout
