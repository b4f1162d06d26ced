"""The ``skald`` command line: every subcommand, over the supervisor and the ZeroMQ client.

``speak`` and ``serve`` run a ``Supervisor`` in this process; ``say``, ``turn``, ``cancel``,
``events`` and ``status`` are control clients of a running ``serve``; ``chunk`` runs the chunker
in-process; ``voice`` and ``gpu`` live in ``actors.cli.voice`` and ``actors.cli.gpu``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from actors import wire
from actors.cli.progress import RenderProgress, StartupProgress, interactive
from actors.logs import LEVELS, LOG_FORMATS, configure_logging, stepped_level
from config.settings import ConfigError, Settings, load_settings
from supervisor import RequestRecord, Supervisor, SupervisorError, default_run_dir, endpoints


def _read_text(args: argparse.Namespace) -> str:
    if args.file:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"skald: cannot read --file {args.file}: {exc}") from None
    if args.text:
        return " ".join(args.text)
    raise SystemExit("skald speak: give TEXT or --file F")


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        raise SystemExit(f"skald: {exc}") from None


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Overrides shared by ``speak`` and ``serve``: sink, engine, voice and the GPU knobs."""
    from actors.cli.gpu import gpu_overrides_from_args

    overrides: dict[str, Any] = dict(gpu_overrides_from_args(args))
    if args.sink:
        overrides["audio.sink"] = args.sink
    if getattr(args, "engine", None):
        overrides["tts.engine"] = args.engine
    if args.log_level is not None:  # -v / --log-info win over log.level
        overrides["log.level"] = logging.getLevelName(args.log_level).lower()
    return overrides


def _supervisor(args: argparse.Namespace, overrides: dict[str, Any], shared_run_dir: bool) -> Supervisor:
    from actors.gpu.tiers import setting_origins

    settings = _settings(args, overrides)
    origins = setting_origins(args.config, overrides=overrides)
    sup = Supervisor(
        settings, shared_run_dir=shared_run_dir, log_level=args.log_level, origins=origins, log_format=args.log_format
    )
    sup.live.config_file, sup.live.overrides = args.config, overrides  # what SIGHUP re-reads
    return sup


def cmd_speak(args: argparse.Namespace) -> int:
    text = _read_text(args)
    overrides = _run_overrides(args)
    if args.unpaced:
        overrides["audio.wav_paced"] = False
    sup = _supervisor(args, overrides, shared_run_dir=False)
    settings = sup.settings
    sup.install_signal_handlers()
    # A bar for an offline render on a terminal; else one line per chunk (both off with --quiet).
    # JSON logs: stderr holds JSON lines only; the chunks are the supervisor's event log lines.
    text_out = args.log_format != "json"
    progress = RenderProgress(
        sup, bar=args.unpaced and interactive(args.quiet) and text_out, lines=not args.quiet and text_out
    )
    sup.listeners.append(progress)
    try:
        with StartupProgress(sup, enabled=interactive(args.quiet)):
            sup.start()
        reply = sup.submit(wire.Speak(text=text, voice=args.voice or ""))[0]
        if isinstance(reply, wire.Error):
            print(f"skald speak: [{reply.kind}] {reply.message}", file=sys.stderr)
            return 2
        assert isinstance(reply, wire.Accepted)
        rec = sup.requests[reply.request_id]
        with progress:
            sup.run(until=lambda: rec.status != "active")
        if rec.status == "active":
            rec.status = "cancelled"
            rec.reason = sup.stop_reason or "interrupted"
        report = _report(sup, rec)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        if args.log_format == "json":
            _result_log.info(
                "%s", rec.status, extra={"event": "speak_finished", "request_id": rec.request_id, **_summary(report)}
            )
            return 0 if rec.status == "done" and sup.exit_code == 0 else 1
        print(
            f"skald: {rec.status}; TTFA {report['ttfa_ms']:.0f} ms, RTF {report['rtf']:.3f}, "
            f"underruns {report['underruns']}"
            + (f", device underflows {report['device_underflows']}" if report["device_underflows"] else "")
            + f", {report['audio_seconds']:.2f} s of audio"
            + (f" -> {settings.audio.sink[4:]}" if settings.audio.sink.startswith("wav:") else ""),
            file=sys.stderr,
        )
        return 0 if rec.status == "done" and sup.exit_code == 0 else 1
    except SupervisorError as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return 1
    finally:
        sup.shutdown()


# The result of ``skald speak`` in JSON-log mode: always written, whatever the log level.
_result_log = logging.getLogger("skald.result")
_result_log.setLevel(logging.INFO)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("ttfa_ms", "rtf", "wait_s", "underruns", "device_underflows", "audio_seconds", "sink")
    return {k: report[k] for k in keys}


def _report(sup: Supervisor, rec: RequestRecord) -> dict[str, Any]:
    # The span goes out as the wire's ChunkSpan fields, the same shape as in chunk_synthesized.
    chunks = [
        {
            "text": c.text,
            "est_s": c.est_s,
            "dur_s": c.dur_s,
            "synth_ms": c.synth_ms,
            "wait_ms": c.wait_ms,
            "engine": c.engine,
            "span": msgspec.to_builtins(c.span) if c.span is not None else {},
        }
        for _, c in sorted(rec.chunks.items())
    ]
    audio_s = rec.audio_s or sum(c.dur_s for c in rec.chunks.values())
    # rtf: the engine's compute over the audio; wait_s: time the worker waited for ring space
    # (the overfill guard on a paced sink), reported apart so neither hides in the other.
    synth_s = sum(c.synth_ms for c in rec.chunks.values()) / 1000.0
    wait_s = sum(c.wait_ms for c in rec.chunks.values()) / 1000.0
    worker = sup.children[wire.Role.TTS_WORKER].info
    return {
        "request_id": rec.request_id,
        "status": rec.status,
        "ttfa_ms": rec.ttfa_ms,
        "rtf": synth_s / audio_s if audio_s else 0.0,
        "wait_s": round(wait_s, 3),
        "underruns": rec.underruns,
        "device_underflows": rec.device_underflows,
        "audio_seconds": audio_s,
        "chunks": chunks,
        "engine": worker.get("engine", ""),
        "voice": worker.get("voice", ""),
        "sample_rate": worker.get("sample_rate", 0),
        "sink": sup.settings.audio.sink,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = _run_overrides(args)
    if args.run_dir:
        overrides["supervisor.run_dir"] = args.run_dir
    if args.http:
        # A bare port binds loopback, the safe default.
        overrides["web.http"] = f"127.0.0.1:{args.http}" if args.http.isdigit() else args.http
    if args.metrics:
        overrides["supervisor.metrics"] = args.metrics
    sup = _supervisor(args, overrides, shared_run_dir=True)
    sup.install_signal_handlers(reload_on_hangup=True)
    try:
        with StartupProgress(sup, enabled=interactive()):
            sup.start()
        where = sup.metrics.http_address
        print(
            f"skald serving: control {sup.control_endpoint}  events {sup.events_endpoint}"
            + (f"  metrics http://{where[0]}:{where[1]}/metrics" if where else ""),
            flush=True,
        )
        if sup.gateway:
            print(f"skald http: {sup.children['web'].info.get('url', '')}", flush=True)
        sup.run()
        return sup.exit_code
    except SupervisorError as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return 1
    finally:
        sup.shutdown()


def cmd_status(args: argparse.Namespace) -> int:
    from actors.client import SkaldClient, SkaldClientError

    overrides = {"supervisor.run_dir": args.run_dir} if args.run_dir else {}
    settings = _settings(args, overrides)
    endpoint = args.endpoint or endpoints(settings, default_run_dir(settings, shared=True)).control
    try:
        curve = _curve_keys(settings, endpoint)
        with SkaldClient(endpoint, events_endpoint=None, timeout_s=args.timeout, curve=curve) as client:
            status = client.status()
    except SkaldClientError as exc:
        print(f"skald status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def _client(args: argparse.Namespace, events: bool = False) -> Any:
    from actors.client import SkaldClient

    overrides = {"supervisor.run_dir": args.run_dir} if args.run_dir else {}
    settings = _settings(args, overrides)
    server = endpoints(settings, default_run_dir(settings, shared=True))
    control = args.endpoint or server.control
    curve = _curve_keys(settings, control)
    # With events, the client returns once its subscription is proven live (see SkaldClient).
    return SkaldClient(
        control, events_endpoint=server.events if events else None, timeout_s=args.timeout, curve=curve
    )


def _curve_keys(settings: Settings, endpoint: str) -> Any:
    """The CurveZMQ keys a ``tcp://`` endpoint needs (``supervisor.curve_client_key`` and
    ``supervisor.curve_server_public_key``); None for the local ipc sockets."""
    if not endpoint.startswith("tcp://"):
        return None
    from actors.security import ClientKeys, SecurityError

    sup = settings.supervisor
    try:
        return ClientKeys.load(sup.curve_client_key, sup.curve_server_public_key)
    except SecurityError as exc:
        raise SystemExit(f"skald: {exc}") from None


def _event_line(msg: wire.Message) -> str:
    return json.dumps({"event": msg.KIND.decode(), **msgspec.structs.asdict(msg)}, ensure_ascii=False)


def _follow(client: Any, request_id: str, as_json: bool) -> int:
    """Print a request's events until it finishes; exit status 0 only if it ended ``done``."""
    for event in client.events():
        if getattr(event, "request_id", None) not in (request_id, "", None) and not isinstance(event, wire.Error):
            continue
        if as_json:
            print(_event_line(event), flush=True)
        elif isinstance(event, wire.ChunkPlanned):
            print(f"  chunk {event.index}: {event.text}", flush=True)
        elif isinstance(event, wire.PlaybackStarted):
            print(f"  playback started, TTFA {event.ttfa_ms:.0f} ms", flush=True)
        elif isinstance(event, wire.Error):
            print(f"  error [{event.kind}] {event.actor}: {event.message}", flush=True)
        elif isinstance(event, wire.AudioOutputRestored):
            print(f"  output device {event.device!r} is back after {event.down_s:.2f} s", flush=True)
        if isinstance(event, wire.RequestFinished) and event.request_id == request_id:
            if not as_json:
                print(f"{request_id}: {event.status} ({event.audio_s:.2f} s of audio, {event.underruns} underruns)")
            return 0 if event.status == "done" else 1
    return 1


def cmd_say(args: argparse.Namespace) -> int:
    """Send text (or a turn) to a running server; with --wait, follow it to the end."""
    from actors.client import SkaldClientError

    try:
        with _client(args, events=args.wait) as client:
            if args.command == "turn":
                rid = client.turn(
                    " ".join(args.action),
                    args.context or "",
                    voice=args.voice or "",
                    priority=args.priority,
                    barge_in="queue" if args.queue else "interrupt",
                )
            else:
                rid = client.speak(
                    _read_text(args),
                    voice=args.voice or "",
                    priority=args.priority,
                    barge_in="interrupt" if args.interrupt else "queue",
                )
            print(rid, flush=True)
            return _follow(client, rid, args.json) if args.wait else 0
    except SkaldClientError as exc:
        print(f"skald {args.command}: {exc}", file=sys.stderr)
        return 1


def cmd_cancel(args: argparse.Namespace) -> int:
    from actors.client import SkaldClientError

    if bool(args.request_id) == bool(args.all):
        raise SystemExit("skald cancel: give a REQUEST_ID or --all")
    try:
        with _client(args) as client:
            client.cancel(args.request_id or "", all=args.all)
    except SkaldClientError as exc:
        print(f"skald cancel: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Print every published event as one JSON line (until interrupted or --count reached)."""
    from actors.client import SkaldClientError

    seen = 0
    try:
        with _client(args, events=True) as client:
            # The client returned: its subscription is live. Said on stderr for scripts that wait.
            print(f"skald events: subscribed to {client.events_endpoint}", file=sys.stderr, flush=True)
            for event in client.events(timeout_s=args.idle_timeout):
                if args.request and getattr(event, "request_id", None) != args.request:
                    continue
                print(_event_line(event), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
    except SkaldClientError as exc:
        print(f"skald events: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_chunk(args: argparse.Namespace) -> int:
    from actors.text.chunker import ChunkerConfig, SemanticChunker, SpeakingRate
    from actors.text.normalize import Lexicon
    from actors.tts import EngineError, create_engine

    settings = _settings(args)
    try:
        engine = create_engine(settings.tts.engine, settings)
        info = engine.load_voice(args.voice or settings.tts.voice)
    except EngineError as exc:
        print(f"skald chunk: {exc}", file=sys.stderr)
        return 1
    c = settings.chunker
    streams = getattr(engine, "streams_voice", None)  # streaming Piper plans a whole first sentence
    chunker = SemanticChunker(
        SpeakingRate(chars_per_s=info.chars_per_s),
        ChunkerConfig.from_settings(c, streaming=streams is not None and streams(info.name)),
        lexicon=Lexicon.load(c.lexicon) if c.lexicon else None,
    )

    def emit(plans: Iterable[Any]) -> None:
        for plan in plans:
            row = {"text": plan.text, "source": plan.source, "est_s": round(plan.est_s, 3)}
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    if args.stream:
        # Read whatever has arrived (tokens piped from a model) and decide chunks at once.
        print(f"skald chunk: voice {info.name} loaded; reading standard input", file=sys.stderr, flush=True)
        fd = sys.stdin.fileno()
        decoder = __import__("codecs").getincrementaldecoder("utf-8")(errors="replace")
        while True:
            data = os.read(fd, 4096)
            if not data:
                break
            emit(chunker.feed(decoder.decode(data)))
        emit(chunker.feed(decoder.decode(b"", final=True)))
    else:
        emit(chunker.feed(sys.stdin.read()))
    emit(chunker.finish())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from actors.cli.config_cmd import add_config_parser
    from actors.cli.devices import add_devices_parser
    from actors.cli.gpu import add_gpu_arguments, add_gpu_parser
    from actors.cli.top import add_top_parser, run_top
    from actors.cli.voice import add_voice_parser, run_voice_command
    from actors.tts import ENGINES

    parser = argparse.ArgumentParser(prog="skald", description="Real-time streaming narration engine.")
    parser.add_argument("--config", help="TOML file overriding config/default.toml")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log detail, one step each: warning -> info -> debug"
    )
    parser.add_argument("--log-level", choices=LEVELS, help="log level (default: log.level, SKALD_LOG_LEVEL)")
    parser.add_argument("--log-info", action="store_const", dest="log_level", const="info", help=argparse.SUPPRESS)
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text | json: one JSON object per line from every process"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    speak = sub.add_parser("speak", help="speak TEXT or a file, then exit")
    speak.add_argument("text", nargs="*", help="text to speak")
    speak.add_argument("--file", "-f", help="read the text from a file")
    speak.add_argument("--voice", help="voice name (default: tts.voice)")
    speak.add_argument("--sink", help="device | null | wav:PATH (default: audio.sink)")
    speak.add_argument("--unpaced", action="store_true", help="wav sink: write as fast as possible (offline render)")
    speak.add_argument("--report", help="write a JSON report (ttfa_ms, rtf, underruns, audio_seconds, chunks)")
    speak.add_argument("--quiet", "-q", action="store_true", help="no per-chunk progress lines")
    speak.add_argument("--engine", choices=ENGINES, help="TTS engine (default: tts.engine)")
    add_gpu_arguments(speak)
    speak.set_defaults(func=cmd_speak)

    serve = sub.add_parser("serve", help="run until SIGINT/SIGTERM; orchestrators connect over ZeroMQ")
    serve.add_argument("--sink", help="device | null | wav:PATH")
    serve.add_argument("--run-dir", help="directory for the ipc sockets (default: $XDG_RUNTIME_DIR/skald-UID)")
    serve.add_argument("--engine", choices=ENGINES, help="TTS engine (default: tts.engine)")
    serve.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="also serve the HTTP API (OpenAI-compatible /v1/audio/speech; docs/http.md) on HOST:PORT "
        "(a bare PORT binds 127.0.0.1); a non-loopback HOST needs web.api_key",
    )
    serve.add_argument(
        "--metrics",
        nargs="?",
        const="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics over HTTP (default 127.0.0.1:9464; a bare PORT is loopback)",
    )
    add_gpu_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    add_voice_parser(sub).set_defaults(func=lambda a: run_voice_command(a, _settings(a)))
    from actors.cli.keys import add_keys_parser

    add_keys_parser(sub)
    add_gpu_parser(sub)
    add_config_parser(sub)
    add_devices_parser(sub)

    status = sub.add_parser("status", help="print a running server's status as JSON")
    status.add_argument("--endpoint", help="control endpoint (default: the serve run dir's control.sock)")
    status.add_argument("--run-dir", help="the server's run dir")
    status.add_argument("--timeout", type=float, default=2.0)
    status.set_defaults(func=cmd_status)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", help="control endpoint (default: the serve run dir's control.sock)")
        p.add_argument("--run-dir", help="the server's run dir")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server's reply")

    top = add_top_parser(sub)  # actors/cli/top.py
    client_options(top)
    top.set_defaults(func=lambda a: run_top(a, lambda: _client(a, events=True)))

    say = sub.add_parser("say", help="send text to a running `skald serve`; prints the request id at once")
    say.add_argument("text", nargs="*", help="text to speak")
    say.add_argument("--file", "-f", help="read the text from a file")
    say.add_argument("--voice", help="voice name")
    say.add_argument("--priority", type=int, default=0, help="higher is synthesized before queued work")
    say.add_argument("--interrupt", action="store_true", help="barge in: cancel what is playing first")
    say.add_argument("--wait", action="store_true", help="follow the request's events until it finishes")
    say.add_argument("--json", action="store_true", help="with --wait: events as JSON lines")
    client_options(say)
    say.set_defaults(func=cmd_say)

    turn = sub.add_parser("turn", help="a game turn: prelude model speaks at once, narrative model continues")
    turn.add_argument("action", nargs="+", help="what the player just did")
    turn.add_argument("--context", help="the story so far")
    turn.add_argument("--voice", help="voice name")
    turn.add_argument("--priority", type=int, default=0)
    turn.add_argument("--queue", action="store_true", help="play after what is playing (default: interrupt it)")
    turn.add_argument("--wait", action="store_true", help="follow the turn's events until it finishes")
    turn.add_argument("--json", action="store_true", help="with --wait: events as JSON lines")
    client_options(turn)
    turn.set_defaults(func=cmd_say)

    cancel = sub.add_parser("cancel", help="stop a request (or --all) on a running server, with a fade")
    cancel.add_argument("request_id", nargs="?", help="the id `skald say` printed")
    cancel.add_argument("--all", action="store_true", help="stop everything playing or queued")
    client_options(cancel)
    cancel.set_defaults(func=cmd_cancel)

    events = sub.add_parser("events", help="print a running server's events as JSON lines")
    events.add_argument("--request", help="only this request's events")
    events.add_argument("--count", type=int, default=0, help="exit after this many events")
    events.add_argument("--idle-timeout", type=float, default=None, help="exit after this many seconds with none")
    client_options(events)
    events.set_defaults(func=cmd_events)

    chunk = sub.add_parser("chunk", help="print the chunk plan of standard input as JSON lines")
    chunk.add_argument("--voice", help="voice whose speaking rate sizes the chunks")
    chunk.add_argument("--stream", action="store_true", help="decide chunks as input arrives (pipe LLM tokens in)")
    chunk.set_defaults(func=cmd_chunk)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logs(args)
    return int(args.func(args))


def _configure_logs(args: argparse.Namespace) -> None:
    """Level and format from the flags over ``log.*`` (config file, ``SKALD_LOG_*``); ``-v`` steps
    from there. ``speak``/``serve`` run the supervisor in this process: it logs as "supervisor"."""
    settings = _settings(args)
    args.log_level = stepped_level(args.log_level or settings.log.level, args.verbose)
    args.log_format = args.log_format or settings.log.format
    configure_logging(args.log_level, args.log_format, "supervisor" if args.command in ("speak", "serve") else "cli")
