"""The error and output paths of the main ``skald`` subcommands (``actors/cli/__init__.py``)
in-process: ``speak`` without text or with an unreadable file, a config file that is refused,
``speak``/``serve`` when the run dir belongs to another live supervisor, ``status``/``say``/
``cancel``/``events`` against a real ZeroMQ peer standing where ``skald serve`` would
(``tests/support/wire_peer.py``) or against nothing, a ``tcp://`` endpoint without CurveZMQ keys,
and ``chunk`` with an unknown voice."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import wire
from actors.cli import build_parser, cmd_cancel, cmd_chunk, cmd_events, cmd_say, cmd_serve, cmd_speak, cmd_status
from tests.support.wire_peer import WirePeer


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _signal_handlers() -> Iterator[None]:
    """``speak``/``serve`` install their handlers in this process: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[WirePeer]:
    p = WirePeer(tmp_path, wire.encode(wire.Subscribed()))
    yield p
    p.close()


def _args(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    args.log_level, args.log_format = logging.INFO, "text"  # what main()'s _configure_logs sets
    return args


# ---------------------------------------------------------------- input and config
def test_speak_without_text_or_with_an_unreadable_file_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"skald speak: give TEXT or --file F"):
        cmd_speak(_args("speak"))
    missing = tmp_path / "story.txt"
    with pytest.raises(SystemExit, match=rf"skald: cannot read --file {missing}: .*No such file"):
        cmd_speak(_args("speak", "--file", str(missing)))
    binary = tmp_path / "story.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SystemExit, match=r"skald: cannot read --file .*codec can't decode"):
        cmd_speak(_args("speak", "--file", str(binary)))


def test_a_refused_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "skald.toml"
    config.write_text("[ring]\ncapacity_s = -3.0\n")
    with pytest.raises(SystemExit, match=r"skald: config error: ring\.capacity_s = -3\.0"):
        cmd_status(_args("--config", str(config), "status"))


@pytest.mark.parametrize("command", ["speak", "serve"])
def test_a_run_dir_owned_by_another_live_supervisor_fails_cleanly(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "supervisor.pid").write_text(str(os.getppid()))  # a live process, not this one
    config = tmp_path / "skald.toml"
    config.write_text(f'[supervisor]\nrun_dir = "{run_dir}"\n')
    argv = ["--config", str(config), command, "--sink", "null", "--engine", "piper"]
    # serve: its own flags too (the run dir from --run-dir wins over the file's; nothing is bound
    # before the run dir is claimed, so the HTTP and metrics ports are never opened).
    argv += ["Hello there."] if command == "speak" else ["--run-dir", str(run_dir), "--http", "1", "--metrics"]
    if command == "serve":
        config.write_text('[supervisor]\nrun_dir = "/nonexistent/not-this-one"\n')
    code = (cmd_speak if command == "speak" else cmd_serve)(_args(*argv))
    assert code == 1
    assert f"skald: another skald supervisor (pid {os.getppid()}) owns {run_dir}" in capsys.readouterr().err
    assert (run_dir / "supervisor.pid").read_text() == str(os.getppid())  # the other's dir is left alone


# ---------------------------------------------------------------- control clients
def test_status_prints_the_servers_status_and_fails_clearly_when_none_answers(
    peer: WirePeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peer.answer_in_background(wire.Status(uptime_s=12.5, ring={"sample_rate": 22050}))
    assert cmd_status(_args("status", "--run-dir", str(tmp_path))) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["uptime_s"] == 12.5 and printed["ring"] == {"sample_rate": 22050}
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    assert cmd_status(_args("status", "--run-dir", str(nobody), "--timeout", "0.3")) == 1
    assert capsys.readouterr().err.startswith("skald status: ")


def test_a_tcp_endpoint_without_curve_keys_is_refused_naming_the_settings() -> None:
    with pytest.raises(SystemExit, match=r"skald: .*curve"):
        cmd_status(_args("status", "--endpoint", "tcp://127.0.0.1:9"))


def _serve_say(peer: WirePeer, events: list[wire.Message]) -> threading.Thread:
    """Answer the next request with Accepted(r1), then publish ``events``."""

    def script() -> None:
        peer.reply(wire.Accepted(request_id="r1", t_accepted=0.0))
        peer.publish(*(wire.encode(e) for e in events))

    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    return thread


def test_say_wait_prints_the_requests_events_and_fails_when_it_failed(
    peer: WirePeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = _serve_say(
        peer,
        [
            wire.ChunkPlanned(request_id="other", index=0, text="Not ours.", est_s=1.0),
            wire.ChunkPlanned(request_id="r1", index=0, text="Hello there.", est_s=1.0),
            wire.PlaybackStarted(request_id="r1", ttfa_ms=180.4),
            wire.AudioOutputRestored(device="pulse", down_s=1.5),
            wire.Error(kind="audio_output", message="output device lost", actor="audio_consumer"),
            wire.RequestFinished(request_id="r1", status="failed", audio_s=0.8, underruns=2),
        ],
    )
    code = cmd_say(_args("say", "Hello", "there.", "--wait", "--run-dir", str(tmp_path)))
    thread.join(30)
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out == [
        "r1",
        "  chunk 0: Hello there.",
        "  playback started, TTFA 180 ms",
        "  output device 'pulse' is back after 1.50 s",
        "  error [audio_output] audio_consumer: output device lost",
        "r1: failed (0.80 s of audio, 2 underruns)",
    ]


def test_turn_wait_json_prints_event_lines_and_succeeds_when_done(
    peer: WirePeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = _serve_say(peer, [wire.RequestFinished(request_id="r1", status="done", audio_s=2.0)])
    code = cmd_say(_args("turn", "I", "open", "the", "door", "--wait", "--json", "--run-dir", str(tmp_path)))
    thread.join(30)
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0] == "r1"
    assert json.loads(out[1])["event"] == "request_finished" and json.loads(out[1])["status"] == "done"


def test_cancel_needs_exactly_one_target_and_reports_a_refusal(
    peer: WirePeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["cancel"], ["cancel", "r1", "--all"]):
        with pytest.raises(SystemExit, match="skald cancel: give a REQUEST_ID or --all"):
            cmd_cancel(_args(*argv, "--run-dir", str(tmp_path)))
    received = peer.answer_in_background(wire.Error(kind="bad_request", message="no request 'r9' to cancel"))
    assert cmd_cancel(_args("cancel", "r9", "--run-dir", str(tmp_path))) == 1
    assert received == [wire.Cancel(request_id="r9")]
    assert "skald cancel: " in capsys.readouterr().err


def test_events_prints_one_requests_events_up_to_the_count(
    peer: WirePeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def publish() -> None:
        peer.publish(
            wire.encode(wire.PlaybackStarted(request_id="a", ttfa_ms=1.0)),
            wire.encode(wire.PlaybackStarted(request_id="b", ttfa_ms=2.0)),
            wire.encode(wire.RequestFinished(request_id="b", status="done")),
            wire.encode(wire.RequestFinished(request_id="b", status="done", audio_s=9.0)),
        )

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    code = cmd_events(_args("events", "--request", "b", "--count", "2", "--run-dir", str(tmp_path)))
    thread.join(30)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and [(e["event"], e["request_id"]) for e in lines] == [
        ("playback_started", "b"),
        ("request_finished", "b"),
    ]
    assert "skald events: subscribed to ipc://" in captured.err


def test_events_without_a_server_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_events(_args("events", "--run-dir", str(tmp_path), "--timeout", "0.3")) == 1
    assert capsys.readouterr().err.startswith("skald events: ")


# ---------------------------------------------------------------- chunk
def test_chunk_with_an_unknown_voice_fails_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("never read"))
    assert cmd_chunk(_args("chunk", "--voice", "nobody")) == 1
    assert "skald chunk: " in (err := capsys.readouterr().err) and "nobody" in err


def test_say_without_a_server_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_say(_args("say", "Hello.", "--run-dir", str(tmp_path), "--timeout", "0.3")) == 1
    assert capsys.readouterr().err.startswith("skald say: ")


@pytest.mark.parametrize("stream", [False, True])
def test_chunk_prints_the_plan_of_standard_input(
    stream: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "The door creaks open. A cold wind blows through the hall, and somewhere a bell rings once."
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        assert cmd_chunk(_args("chunk", *(["--stream"] if stream else []))) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert " ".join(r["text"] for r in rows) == text and all(r["est_s"] > 0 for r in rows)
    assert ("reading standard input" in captured.err) == stream
