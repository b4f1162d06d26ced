"""Process-level tests: a real ``skald serve`` with real actor processes, sockets and ring.

Each test is checked by the ``no_leaks`` fixture afterwards: no process, no /dev/shm
segment and no ipc file may be left, whatever the test killed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import msgpack
import psutil
import pytest

from actors import wire
from tests.conftest import sample_text

pytestmark = pytest.mark.slow

CRYPT = sample_text("crypt.txt")


def _events_until(client, pred, timeout: float = 30.0) -> list[wire.Message]:  # type: ignore[no-untyped-def]
    seen: list[wire.Message] = []
    deadline = time.monotonic() + timeout
    for event in client.events(timeout_s=timeout):
        seen.append(event)
        if pred(event) or time.monotonic() > deadline:
            break
    return seen


def test_speak_emits_the_whole_event_sequence(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with server.client() as client:
        rid = client.speak("The torchlight flickers. Somewhere ahead, water drips.")
        finished, events = client.wait_for(rid, timeout_s=30)
    kinds = [type(e).__name__ for e in events if getattr(e, "request_id", "") == rid]
    assert finished.status == "done", finished
    for kind in ("Accepted", "ChunkPlanned", "ChunkSynthesized", "PlaybackStarted", "RequestFinished"):
        assert kind in kinds, kinds
    assert kinds.index("PlaybackStarted") < kinds.index("RequestFinished")
    started = next(e for e in events if isinstance(e, wire.PlaybackStarted))
    assert 0 < started.ttfa_ms < 5000
    assert finished.audio_s > 1.0 and finished.underruns == 0
    assert server.stop() == 0


BAD_INPUTS: list[tuple[str, list[bytes], str]] = [
    ("random bytes", [b"speak", os.urandom(64)], "malformed"),
    ("one frame", [b"\x00\x01\x02"], "malformed"),
    ("wrong version", [b"speak", msgpack.packb({"v": 7, "text": "Hello."})], "wrong_version"),
    ("unknown kind", [b"reticulate", msgpack.packb({"v": 1})], "unknown_kind"),
    ("not a client request", wire.encode(wire.Segment(request_id="x", index=0, start=0, end=9)), "unknown_kind"),
    ("10 MB text", [b"speak", msgpack.packb({"v": 1, "text": "a" * 10_000_000})], "oversized"),
    ("empty text", [b"speak", msgpack.packb({"v": 1, "text": ""})], "bad_request"),
    ("invalid utf-8", [b"speak", b"\x82\xa1v\x01\xa4text\xa3\xff\xfe\xfd"], "malformed"),
    ("control characters", [b"speak", msgpack.packb({"v": 1, "text": "a\x1b[31mred"})], "bad_request"),
    ("append to nothing", wire.encode(wire.Append(request_id="nope", text="x")), "bad_request"),
    ("cancel unknown", wire.encode(wire.Cancel(request_id="nope")), "bad_request"),
    ("unknown barge_in", [b"speak", msgpack.packb({"v": 1, "text": "Hi.", "barge_in": "shout"})], "bad_request"),
    ("wrong type of barge_in", [b"turn", msgpack.packb({"v": 1, "player_action": "x", "barge_in": 1})], "malformed"),
]


def test_malformed_input_gets_error_events_and_the_server_lives_on(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    pids_before = server.actor_pids()
    with server.client() as client:
        for label, frames, kind in BAD_INPUTS:
            reply = client.send_raw(frames)
            assert isinstance(reply, wire.Error), label
            assert reply.kind == kind, (label, reply)
            assert reply.message, label
        # The same errors were published for subscribers.
        published = [e for e in client.events(timeout_s=0.5) if isinstance(e, wire.Error)]
        assert len(published) >= len(BAD_INPUTS)
        rid = client.speak("Still here.")
        finished, _ = client.wait_for(rid, timeout_s=30)
    assert finished.status == "done"
    assert server.actor_pids() == pids_before  # nothing crashed or restarted
    assert server.proc.poll() is None
    assert server.stop() == 0


# The stage's actors; the gateway's (web, tts_render) are killed in tests/test_http.py.
@pytest.mark.parametrize("role", [r for r in wire.Role if r not in (wire.Role.WEB, wire.Role.TTS_RENDER)])
def test_sigkill_of_an_actor_is_noticed_restarted_and_reported(make_server, role: str) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    victim = server.actor_pids()[role]
    with server.client() as client:
        rid = client.speak(CRYPT, prelude="Listen." if role == wire.Role.PRELUDE else "")
        _events_until(client, lambda e: isinstance(e, wire.PlaybackStarted))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        crash: wire.Error | None = None
        finished: wire.RequestFinished | None = None
        # Up to a minute without events: the rest of the narration plays on after its last chunk.
        for event in client.events(timeout_s=60):
            if isinstance(event, wire.Error) and event.kind == "actor_crashed" and crash is None:
                crash = event
                noticed_s = time.monotonic() - killed_at
            if isinstance(event, wire.RequestFinished) and event.request_id == rid:
                finished = event
            if crash is not None and finished is not None:
                break
        assert crash is not None and crash.actor == role, crash
        assert noticed_s < 1.0, f"crash noticed after {noticed_s:.3f} s"
        # Nothing is lost: a killed worker's requests resume, a killed consumer's play on, and a
        # speak never passes through the text actors (tests/test_resume.py checks the content).
        assert finished is not None and finished.status == "done", finished
        # Restarted: a new pid, ready, and the next request completes.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = client.status()["actors"][role]
            if status["ready"] and status["pid"] != victim:
                break
            time.sleep(0.1)
        assert status["ready"] and status["pid"] != victim and status["restarts"] == 1
        rid2 = client.speak("The crypt falls silent.")
        after, _ = client.wait_for(rid2, timeout_s=30)
    assert after.status == "done"
    assert server.stop() == 0


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_of_the_supervisor_takes_every_child_down(make_server, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    children = [psutil.Process(pid) for pid in server.actor_pids().values()]
    with server.client() as client:
        client.speak(CRYPT)
        _events_until(client, lambda e: isinstance(e, wire.PlaybackStarted))  # mid-speech when it dies
    ring = [e for e in os.listdir("/dev/shm") if e == f"skald-{server.proc.pid}-pcm"]
    assert ring, "the ring segment should exist while the server runs"
    killed_at = time.monotonic()
    server.proc.kill()
    server.proc.wait()
    alive = children
    while alive and time.monotonic() - killed_at < 2.0:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.02)
    exited_s = time.monotonic() - killed_at
    # Orphans are re-parented to PID 1, which may reap them late: a zombie has exited.
    assert not alive, f"children still running 2 s after the supervisor died: {[p.pid for p in alive]}"
    assert exited_s < 2.0
    deadline = time.monotonic() + 2.0
    while (run_dir.exists() or os.path.exists(f"/dev/shm/{ring[0]}")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/dev/shm/{ring[0]}"), "orphaned children must unlink the ring"
    assert not run_dir.exists(), "orphaned children must remove the run dir (ipc sockets)"
    server.stop()


def test_sigterm_shuts_down_cleanly_mid_speech(make_server, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with server.client() as client:
        client.speak(CRYPT)
        _events_until(client, lambda e: isinstance(e, wire.PlaybackStarted))
    assert server.stop(signal.SIGTERM) == 0
    assert not run_dir.exists()
    assert "skald.shutdown: done" in server.log()


def test_gives_up_loudly_after_max_restarts(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--sink", "null", SKALD_SUPERVISOR_MAX_RESTARTS="1", SKALD_SUPERVISOR_RESTART_BACKOFF_S="0.05")
    with server.client() as client:
        os.kill(server.actor_pids()["narrative"], signal.SIGKILL)
        _events_until(client, lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed", timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = client.status()["actors"]["narrative"]
            if st["ready"]:
                break
            time.sleep(0.05)
        os.kill(st["pid"], signal.SIGKILL)
        failed = _events_until(client, lambda e: isinstance(e, wire.Error) and e.kind == "actor_failed", timeout=10)
    assert any(isinstance(e, wire.Error) and e.kind == "actor_failed" and "gave up" in e.message for e in failed)
    assert server.proc.wait(20) == 1
    assert "gave up after 1 restarts" in server.log()
    server.stop()


def test_speak_text_goes_straight_to_the_worker(make_server) -> None:  # type: ignore[no-untyped-def]
    """The orchestrator's own text (prelude, streamed appends, end) reaches the worker without a
    text actor: with both text actors stopped (SIGSTOP: alive, supervised, deaf), it is spoken."""
    server = make_server()
    pids = server.actor_pids()
    text_pids = [pids[role] for role in wire.TEXT_ROLES]
    for pid in text_pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        with server.client() as client:
            rid = client.speak("The gate", prelude="Listen.", streaming=True)
            client.append(rid, " is shut. The guards are asleep.")
            client.end(rid)
            finished, events = client.wait_for(rid, timeout_s=30)
    finally:
        for pid in text_pids:
            os.kill(pid, signal.SIGCONT)
    planned = "".join(e.text for e in events if isinstance(e, wire.ChunkPlanned) and e.request_id == rid)
    assert finished.status == "done", finished
    assert planned.startswith("Listen.") and "guards are asleep" in planned, planned
    assert server.actor_pids() == pids  # nothing was restarted on the way
    assert server.stop() == 0


def test_a_chunk_that_fails_mid_way_is_closed_and_spoken_again(make_server) -> None:  # type: ignore[no-untyped-def]
    """Chunk 1 fails after its first block went out (a real exception in the engine call path);
    the retry puts a ``RestartChunk`` marker in the block queue, the pusher closes the heard part
    with the joiner's fade and speaks the chunk again: the request still ends ``done``."""
    server = make_server(SKALD_FAULT_INJECT="chunk=1,times=1,after=1")
    with server.client() as client:
        rid = client.speak(CRYPT)
        finished, events = client.wait_for(rid, timeout_s=60)
        assert finished.status == "done", finished
        assert not [e for e in events if isinstance(e, wire.Error)], events
        assert any(isinstance(e, wire.ChunkSynthesized) and e.request_id == rid and e.index == 1 for e in events)
        deadline = time.monotonic() + 10
        while (restarts := client.status()["actors"]["tts_worker"]["metrics"].get("restarts")) != 1:
            assert time.monotonic() < deadline, f"worker restarts: {restarts}"  # its metrics tick is 1 s
            time.sleep(0.05)
    assert "chunk 1 of" in server.log() and "after 1 blocks" in server.log()
    assert server.stop() == 0
