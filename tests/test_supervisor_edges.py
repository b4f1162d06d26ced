"""The supervisor's error paths in-process, on a real ``Supervisor`` that is not started (or
only wired to a real actors ROUTER): leftovers swept, a run dir owned by another live
supervisor, an endpoint that cannot be bound, a bad GPU knob, actors that die, hang or ignore
SIGTERM while starting (real spawned processes), a crash past ``max_restarts``, a request whose
text cannot be lined up to resume, bad frames from an actor, a failing event listener, bad
client requests, and the shutdown stages."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import wire
from config.settings import load_settings
from supervisor import (
    AUDIO_CONSUMER,
    FINISHED_DETAILED,
    HEALTHY_RESET_S,
    NARRATIVE,
    PRELUDE,
    TTS_RENDER,
    TTS_WORKER,
    WEB,
    RequestRecord,
    Supervisor,
    SupervisorError,
    sweep_stale,
)


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


# ---------------------------------------------------------------- actor stand-ins (spawned)
def _report_and_exit(endpoint: str, role: str, message: str, code: int) -> None:
    """An actor that reports an error on the actors socket, then exits with ``code``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, role.encode())
    sock.setsockopt(zmq.LINGER, 5000)  # the report must leave before the process does
    sock.connect(endpoint)
    sock.send_multipart(wire.encode(wire.Error(kind="synthesis_failed", message=message, actor=role)))
    sock.close()
    ctx.term()
    os._exit(code)


def _hang(ignore_sigterm: bool, started: Any = None) -> None:
    """An actor that never says READY (a model load that hangs); optionally deaf to SIGTERM
    (``started`` is set once it is)."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if started is not None:
        started.set()
    time.sleep(120)


def _spawn(target: Any, *args: Any) -> Any:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


# ---------------------------------------------------------------- fixtures
def _settings(tmp_path: Path, **overrides: Any) -> Any:
    return load_settings(None, env={}, overrides={"supervisor.run_dir": str(tmp_path / "run"), **overrides})


class Wired:
    """A not-started Supervisor with its actors ROUTER bound (as ``start`` binds it), and the
    events it published."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.sup = Supervisor(_settings(tmp_path, **overrides))
        self.published: list[wire.Message] = []
        self.sup.listeners.append(self.published.append)
        self.sup.run_dir.mkdir(mode=0o700, parents=True)
        self.sup._ctx = zmq.Context()
        self.sup._backend = self.sup._bind(zmq.ROUTER, self.sup.backend_endpoint)
        self.sup._backend.setsockopt(zmq.ROUTER_MANDATORY, 1)

    def of(self, kind: type[wire.Message]) -> list[Any]:
        return [m for m in self.published if isinstance(m, kind)]


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    w = Wired(tmp_path)
    yield w
    w.sup.shutdown()


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(_settings(tmp_path))
    yield s
    s.shutdown()


def _pending(sup: Supervisor, role: str) -> list[wire.Message]:
    return [wire.decode(frames) for frames in sup.children[role].pending]


def _published(sup: Supervisor) -> list[wire.Message]:
    seen: list[wire.Message] = []
    sup.listeners.append(seen.append)
    return seen


# ---------------------------------------------------------------- start-up
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_what_dead_supervisors_left_and_keeps_the_living(tmp_path: Path) -> None:
    dead = _dead_pid()
    segment = Path(f"/dev/shm/skald-{dead}-pcm")
    segment.write_bytes(b"\0" * 64)
    uid = os.getuid()
    gone, alive, garbled = tmp_path / f"skald-{uid}.{dead}", tmp_path / f"skald-{uid}", tmp_path / f"skald-{uid}.x"
    for d, pid in ((gone, str(dead)), (alive, str(os.getpid())), (garbled, "not a pid")):
        d.mkdir()
        (d / "supervisor.pid").write_text(pid)
    try:
        removed = sweep_stale(tmp_path)
    finally:
        segment.unlink(missing_ok=True)
    assert str(segment) in removed and str(gone) in removed
    assert not segment.exists() and not gone.exists()
    assert alive.exists() and garbled.exists()  # a live owner, and a pidfile that names no one


def test_a_run_dir_owned_by_another_live_supervisor_is_refused(sup: Supervisor) -> None:
    sup.run_dir.mkdir(parents=True)
    (sup.run_dir / "supervisor.pid").write_text(str(os.getppid()))  # a live process, not this one
    with pytest.raises(SupervisorError, match=rf"another skald supervisor \(pid {os.getppid()}\) owns"):
        sup._claim_run_dir()
    (sup.run_dir / "supervisor.pid").write_text(str(_dead_pid()))
    (sup.run_dir / "stale.sock").write_text("")
    sup._claim_run_dir()  # a dead owner: its dir is taken over, emptied
    assert not (sup.run_dir / "stale.sock").exists()
    assert (sup.run_dir / "supervisor.pid").read_text() == str(os.getpid())


def test_an_endpoint_that_cannot_be_bound_names_it(sup: Supervisor, tmp_path: Path) -> None:
    sup._ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/no-such-dir/control.sock"
    with pytest.raises(SupervisorError, match=f"cannot bind {endpoint}"):
        sup._bind(zmq.ROUTER, endpoint)


def test_a_bad_gpu_knob_fails_start_up_naming_the_key(tmp_path: Path) -> None:
    # Loading accepts 0.05 (within -1..1024); the GPU resolution knows -1 or 0.1-1024 GB only.
    sup = Supervisor(_settings(tmp_path, **{"gpu.vram_limit_gb": 0.05}))
    refused = r"gpu\.vram_limit_gb = 0\.05: must be -1 \(from the tier\) or between 0\.1"
    with pytest.raises(SupervisorError, match=refused):
        sup._resolve_gpu()


def test_an_actor_that_dies_while_starting_is_reported_with_its_own_error(wired: Wired) -> None:
    sup = wired.sup
    sup.children = {AUDIO_CONSUMER: sup.children[AUDIO_CONSUMER]}
    child = sup.children[AUDIO_CONSUMER]
    child.proc = _spawn(_report_and_exit, sup.backend_endpoint, AUDIO_CONSUMER, "no output device", 3)
    with pytest.raises(SupervisorError, match=r"audio_consumer died during startup \(exit code 3\): no output device"):
        sup._wait_all_ready()


def test_an_actor_that_never_says_ready_times_out_and_is_terminated(tmp_path: Path) -> None:
    w = Wired(tmp_path, **{"supervisor.ready_timeout_s": 0.5, "supervisor.shutdown_timeout_s": 0.1})
    sup = w.sup
    sup.children = {TTS_WORKER: sup.children[TTS_WORKER]}
    proc = sup.children[TTS_WORKER].proc = _spawn(_hang, False)
    try:
        late = r"actors not ready after 0\.5 s: tts_worker \(supervisor\.ready_timeout_s\)"
        with pytest.raises(SupervisorError, match=late):
            sup._wait_all_ready()
    finally:
        sup.shutdown()
    assert not proc.is_alive() and proc.exitcode == -signal.SIGTERM


def test_a_stop_while_starting_interrupts_and_sigkill_ends_an_actor_deaf_to_sigterm(tmp_path: Path) -> None:
    w = Wired(tmp_path, **{"supervisor.shutdown_timeout_s": 0.1})
    sup = w.sup
    sup.children = {TTS_WORKER: sup.children[TTS_WORKER]}
    started = multiprocessing.get_context("spawn").Event()
    proc = sup.children[TTS_WORKER].proc = _spawn(_hang, True, started)
    assert started.wait(30)  # SIGTERM is ignored from here on
    sup.request_stop("SIGINT")
    try:
        with pytest.raises(SupervisorError, match="interrupted while starting"):
            sup._wait_all_ready()
    finally:
        sup.shutdown()
    assert not proc.is_alive() and proc.exitcode == -signal.SIGKILL


# ---------------------------------------------------------------- children at run time
def _crashed(sup: Supervisor, role: str, message: str, code: int) -> Any:
    """``role``'s child, run as a process that reported ``message`` and exited with ``code``; its
    report is queued on the backend, which ``_on_child_exit`` must read first."""
    child = sup.children[role]
    child.proc = _spawn(_report_and_exit, sup.backend_endpoint, role, message, code)
    child.proc.join(30)
    assert sup._backend.poll(30_000)
    return child


def test_a_crash_reports_the_actors_own_error_then_gives_up_past_max_restarts(wired: Wired) -> None:
    sup = wired.sup
    child = _crashed(sup, NARRATIVE, "model file vanished", 5)
    sup._on_child_exit(child)
    crashed = wired.of(wire.Error)[-1]
    assert crashed.kind == "actor_crashed" and crashed.actor == "narrative"
    assert "exited with code 5 (model file vanished); restarting in 0.00 s (restart 1 of 3)" in crashed.message
    assert child.restart_at is not None and child.last_error == ""

    child.restarts = sup.settings.supervisor.max_restarts
    sup._on_child_exit(child)
    failed = wired.of(wire.Error)[-1]
    assert failed.kind == "actor_failed" and "gave up after 3 restarts" in failed.message
    assert sup.exit_code == 1 and sup.stop_reason == "narrative failed"
    assert sup.status().actors["narrative"]["state"] == "failed"


def test_repeated_crashes_back_off_doubling_and_a_healthy_minute_resets_the_count(wired: Wired) -> None:
    sup = wired.sup
    child = _crashed(sup, NARRATIVE, "out of memory", 3)
    backoffs = []
    for _ in range(3):  # the same dead process reported three times: three crashes in a row
        before = time.monotonic()
        sup._on_child_exit(child)
        assert child.restart_at is not None
        backoffs.append(child.restart_at - before)
    messages = [e.message for e in wired.of(wire.Error) if e.kind == "actor_crashed"]
    assert [m.split("; ")[-1] for m in messages] == [
        "restarting in 0.00 s (restart 1 of 3)", "restarting in 0.25 s (restart 2 of 3)",
        "restarting in 0.50 s (restart 3 of 3)",
    ]  # fmt: skip
    assert backoffs[0] < 0.25 <= backoffs[1] < 0.5 <= backoffs[2]  # the first restart is at once
    # Alive and ready for longer than HEALTHY_RESET_S: the next crash is a first crash again.
    child.restart_at, child.ready = None, True
    child.started_at = time.monotonic() - HEALTHY_RESET_S - 1
    sup._housekeeping()
    assert child.restarts == 0
    sup._on_child_exit(child)
    assert wired.of(wire.Error)[-1].message.endswith("restarting in 0.00 s (restart 1 of 3)")


def test_a_consumer_that_dies_before_the_ring_exists_holds_nothing(wired: Wired) -> None:
    sup = wired.sup
    child = _crashed(sup, AUDIO_CONSUMER, "device busy", 2)
    sup.submit(wire.Speak(request_id="r1", text="Hello there."))
    sup._on_child_exit(child)
    message = wired.of(wire.Error)[-1].message
    assert "restart 1 of 3" in message and "play on" not in message  # no ring: nothing held
    assert sup.requests["r1"].status == "active"  # a consumer crash fails nothing


def test_an_actor_not_ready_by_its_deadline_is_killed(wired: Wired) -> None:
    sup = wired.sup
    child = sup.children[PRELUDE]
    child.proc = _spawn(_hang, False)
    child.ready_deadline = time.monotonic() - 1
    sup._housekeeping()
    child.proc.join(30)
    assert child.proc.exitcode == -signal.SIGKILL
    assert child.last_error == "not ready within 60 s"


def test_a_cancel_without_a_silence_report_is_closed_after_the_deadline(sup: Supervisor) -> None:
    seen = _published(sup)
    sup.submit(wire.Speak(request_id="r1", text="Hello there."))
    sup.submit(wire.Cancel(request_id="r1"))
    rec = sup.requests["r1"]
    assert rec.status == "active" and rec.silence_deadline is not None  # waits for Silenced
    sup._housekeeping()
    assert rec.status == "active"  # not yet overdue
    rec.silence_deadline = time.monotonic() - 0.01
    sup._housekeeping()
    silenced = [m for m in seen if isinstance(m, wire.Silenced)]
    assert len(silenced) == 1 and silenced[0].was_audible is False
    finished = [m for m in seen if isinstance(m, wire.RequestFinished)]
    assert finished[-1].status == "cancelled" and finished[-1].reason == "cancelled by client"


def test_a_message_for_a_ready_actor_that_is_not_connected_waits(wired: Wired) -> None:
    sup = wired.sup
    sup.children[TTS_WORKER].ready = True  # READY seen, but its socket is gone (restarting)
    sup._to_actor(TTS_WORKER, wire.Cancel(request_id="r1"))
    assert _pending(sup, TTS_WORKER) == [wire.Cancel(request_id="r1")]


# ---------------------------------------------------------------- resume and failure of requests
def test_a_request_that_cannot_be_lined_up_fails_instead_of_resuming(sup: Supervisor) -> None:
    seen = _published(sup)
    sup.submit(wire.Speak(request_id="r1", text="Hello there."))
    rec = sup.requests["r1"]
    rec.opened = None  # nothing to reopen it with
    sup.children[TTS_WORKER].pending.clear()
    sup._resume(rec)
    assert _pending(sup, TTS_WORKER) == [wire.Cancel(request_id="r1")]
    finished = [m for m in seen if isinstance(m, wire.RequestFinished)][-1]
    assert finished.status == "failed" and "could not be lined up to resume" in finished.reason


def test_a_request_in_its_prelude_resumes_with_the_prelude_first(sup: Supervisor) -> None:
    sup.submit(wire.Speak(request_id="r1", text="The story goes on.", prelude="Well then."))
    sup.children[TTS_WORKER].pending.clear()
    sup._resume(sup.requests["r1"])
    sent = _pending(sup, TTS_WORKER)
    assert isinstance(sent[0], wire.OpenRequest) and sent[0].has_prelude and sent[0].first_index == 0
    assert sent[1] == wire.TextPiece(request_id="r1", source="prelude", text="Well then.", final=True)
    assert sent[2] == wire.TextPiece(request_id="r1", source="narrative", text="The story goes on.", final=True)
    assert sup.requests["r1"].resumed == 1


def test_a_crashed_text_actor_fails_its_turns_and_the_speaks_play_on(tmp_path: Path) -> None:
    sup = Supervisor(_settings(tmp_path, **{"actors.prelude.backend": "openai", "actors.narrative.backend": "openai"}))
    try:
        seen = _published(sup)
        sup.submit(wire.Speak(request_id="speak", text="Hello there."))
        assert isinstance(sup.submit(wire.Turn(request_id="turn", player_action="I open the door."))[0], wire.Accepted)
        for role in (AUDIO_CONSUMER, TTS_WORKER, NARRATIVE, PRELUDE):
            sup.children[role].pending.clear()
        sup._fail_active("prelude crashed", PRELUDE)
        assert sup.requests["turn"].status == "failed" and sup.requests["speak"].status == "active"
        assert _pending(sup, TTS_WORKER) == [wire.Cancel(request_id="turn")]
        finished = [m for m in seen if isinstance(m, wire.RequestFinished)]
        assert [(m.request_id, m.reason) for m in finished] == [("turn", "prelude crashed")]
    finally:
        sup.shutdown()


def test_a_crashed_render_worker_fails_the_renders_only(tmp_path: Path) -> None:
    sup = Supervisor(_settings(tmp_path, **{"web.http": "127.0.0.1:0"}))
    try:
        sup.submit(wire.Speak(request_id="stage", text="Hello there."))
        assert isinstance(sup.submit(wire.Speak(request_id="web", text="Hi.", output="render"))[0], wire.Accepted)
        sup._fail_active("tts_render crashed", TTS_RENDER)
        assert sup.requests["web"].status == "failed" and sup.requests["web"].reason == "tts_render crashed"
        assert sup.requests["stage"].status == "active"
        assert _pending(sup, WEB)[-1] == wire.Cancel(all=True)
        assert wire.Cancel(all=True) not in _pending(sup, TTS_WORKER)
    finally:
        sup.shutdown()


def test_finished_requests_are_kept_to_the_last_thousand(sup: Supervisor) -> None:
    for i in range(1000):
        sup.requests[f"old{i}"] = RequestRecord(f"old{i}", None, 0.0, False, False, status="done")
    sup.submit(wire.Speak(request_id="new", text="Hello there."))
    sup._finish(sup.requests["new"], "done")
    assert len(sup.requests) == 1000 and "old0" not in sup.requests and "new" in sup.requests


def test_a_finished_request_is_kept_as_a_summary_that_late_events_do_not_grow(sup: Supervisor) -> None:
    sup.submit(wire.Speak(request_id="r1", text="Hello there. The gate opens."))
    for index, text in enumerate(("Hello there.", "The gate opens.")):
        planned = wire.ChunkPlanned(request_id="r1", index=index, text=text, est_s=1.0)
        sup._on_backend([b"tts_worker", *wire.encode(planned)])
    rec = sup.requests["r1"]
    assert len(rec.chunks) == 2 and rec.texts and rec.opened is not None  # what a resume needs
    done = wire.RequestFinished(request_id="r1", status="done", audio_s=2.5, ttfa_ms=120.0)
    sup._on_backend([b"audio_consumer", *wire.encode(done)])
    assert (rec.status, rec.audio_s, rec.ttfa_ms) == ("done", 2.5, 120.0)
    assert (rec.texts, rec.segments, rec.opened) == ([], [], None)
    assert [c.text for c in rec.chunks.values()] == ["Hello there.", "The gate opens."]  # the speak report
    late = wire.ChunkPlanned(request_id="r1", index=2, text="Too late.", est_s=1.0)
    sup._on_backend([b"tts_worker", *wire.encode(late)])
    assert len(rec.chunks) == 2
    for i in range(FINISHED_DETAILED):  # newer requests finish: r1's chunk records go too
        sup.submit(wire.Speak(request_id=f"n{i}", text="Next."))
        sup._finish(sup.requests[f"n{i}"], "done")
    assert rec.chunks == {} and rec.status == "done" and sup.requests["r1"] is rec


# ---------------------------------------------------------------- actor messages
def test_bad_frames_from_an_actor_are_logged_and_dropped(sup: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    seen = _published(sup)
    sup._on_backend([b"tts_worker", b"ready"])  # too few frames
    with caplog.at_level(logging.ERROR, logger="skald.supervisor"):
        sup._on_backend([b"tts_worker", b"no_such_kind", b"\x80"])
    assert "bad message from tts_worker" in caplog.text
    sup._on_backend([b"stranger", *wire.encode(wire.Ready(role=TTS_WORKER, pid=1))])  # not one of ours
    assert seen == [] and not any(c.ready for c in sup.children.values())


def test_a_segment_of_an_unknown_request_is_relayed_but_not_kept(sup: Supervisor) -> None:
    seg = wire.Segment(request_id="ghost", index=0, start=0, end=100, last=True)
    sup._on_backend([b"tts_worker", *wire.encode(seg)])
    assert _pending(sup, AUDIO_CONSUMER) == [seg] and "ghost" not in sup.requests


def test_a_failing_event_listener_is_logged_and_the_others_still_hear(
    sup: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_msg: wire.Message) -> None:
        raise RuntimeError("listener bug")

    sup.listeners.insert(0, broken)
    seen = _published(sup)
    with caplog.at_level(logging.ERROR, logger="skald.supervisor"):
        sup.submit(wire.Speak(request_id="r1", text="Hello there."))
    assert "event listener failed" in caplog.text
    assert [m.request_id for m in seen if isinstance(m, wire.Accepted)] == ["r1"]


# ---------------------------------------------------------------- client requests
def _error(replies: list[wire.Message]) -> wire.Error:
    assert len(replies) == 1 and isinstance(replies[0], wire.Error), replies
    return replies[0]


def test_bad_client_requests_get_clear_errors(sup: Supervisor) -> None:
    assert "longer than 128" in _error(sup.submit(wire.Speak(request_id="x" * 129, text="Hi."))).message
    sup.submit(wire.Speak(request_id="r1", text="Hello there."))
    assert "request 'r1' is already active" in _error(sup.submit(wire.Speak(request_id="r1", text="Hi."))).message
    assert "speed 5 is outside 0.25-4.0" in _error(sup.submit(wire.Speak(text="Hi.", speed=5.0))).message
    render = _error(sup.submit(wire.Speak(text="Hi.", output="render"))).message
    assert "needs the HTTP gateway" in render
    turn = _error(sup.submit(wire.Turn(player_action="I wait."))).message
    assert "actors.prelude.backend = 'text'" in turn
    more = _error(sup.submit(wire.Append(request_id="r1", text="more"))).message
    assert "takes no more text (not streaming, or ended)" in more
    assert all(e.kind == "bad_request" for e in (_error(sup.submit(wire.End(request_id="nope"))),))


def test_a_message_that_is_not_a_client_request_is_refused(sup: Supervisor) -> None:
    with pytest.raises(wire.WireError, match="ready is not a client request"):
        sup._dispatch(wire.Ready(role=TTS_WORKER, pid=1), None)


def test_a_bug_while_handling_a_request_is_an_internal_error_not_a_crash(
    sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(_msg: wire.Speak, _client: list[bytes] | None) -> wire.Message:
        raise KeyError("oops")  # stands for a bug in a handler

    monkeypatch.setattr(sup, "_speak", bug)
    err = _error(sup.submit(wire.Speak(text="Hi.")))
    assert err.kind == "internal" and err.message == "KeyError: 'oops'"
    assert isinstance(sup.submit(wire.StatusQuery())[0], wire.Status)  # still serving


# ---------------------------------------------------------------- shutdown
def test_shutdown_removes_the_run_dir_it_claimed_once_and_no_other(tmp_path: Path) -> None:
    sup = Supervisor(_settings(tmp_path))
    sup._claim_run_dir()
    sup.shutdown()
    assert not sup.run_dir.exists()
    sup.run_dir.mkdir()
    sup.shutdown()  # the second call does nothing
    assert sup.run_dir.exists()
    # Refused its start by a live owner: the owner's run dir (its sockets, its pidfile) stays.
    (sup.run_dir / "supervisor.pid").write_text(str(os.getppid()))
    refused = Supervisor(_settings(tmp_path))
    with pytest.raises(SupervisorError, match="another skald supervisor"):
        refused._claim_run_dir()
    refused.shutdown()
    assert (sup.run_dir / "supervisor.pid").read_text() == str(os.getppid())


def test_start_sweeps_leftovers_first_then_refuses_a_bad_gpu_knob(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor(_settings(tmp_path, **{"gpu.vram_limit_gb": 0.05}))
    stale = tmp_path / f"skald-{os.getuid()}.{_dead_pid()}"
    stale.mkdir()
    (stale / "supervisor.pid").write_text(stale.name.rsplit(".", 1)[1])
    try:
        with caplog.at_level(logging.INFO, logger="skald.supervisor"), pytest.raises(SupervisorError, match="vram"):
            sup.start()
    finally:
        sup.shutdown()
    assert f"removed leftovers of dead supervisors: {stale}" in caplog.text and not stale.exists()
    assert not sup.run_dir.exists()  # refused before it made anything of its own


def test_the_gateway_needs_its_optional_packages_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    # Stands for a machine without the 'web' extra's PyAV (installed here, so it is hidden).
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "av" else real_find_spec(name))
    sup = Supervisor(_settings(tmp_path, **{"web.http": "127.0.0.1:0"}))
    with pytest.raises(SupervisorError, match=r"web\.http = '127\.0\.0\.1:0' needs av: pip install 'skald\[web\]'"):
        sup._check_gateway_deps()


def test_run_returns_false_when_its_timeout_passes_and_at_once_when_stopped(sup: Supervisor) -> None:
    assert sup.run(until=lambda: False, timeout=0.0) is False  # the deadline is checked before a poll
    sup.request_stop("SIGTERM")
    sup.request_stop("later")  # the first reason stays
    assert sup.run(until=lambda: True) is True and sup.run() is False
    assert sup.stop_reason == "SIGTERM"
