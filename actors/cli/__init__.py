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
from actors.runtime import configure_logging
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
    return overrides


def _supervisor(args: argparse.Namespace, overrides: dict[str, Any], shared_run_dir: bool) -> Supervisor:
    from actors.gpu.tiers import setting_origins

    settings = _settings(args, overrides)
    origins = setting_origins(args.config, overrides=overrides)
    return Supervisor(settings, shared_run_dir=shared_run_dir, log_level=args.log_level, origins=origins)


def cmd_speak(args: argparse.Namespace) -> int:
    text = _read_text(args)
    overrides = _run_overrides(args)
    if args.unpaced:
        overrides["audio.wav_paced"] = False
    sup = _supervisor(args, overrides, shared_run_dir=False)
    settings = sup.settings
    sup.install_signal_handlers()
    progress = not args.quiet

    def show(msg: wire.Message) -> None:
        if not progress:
            return
        if isinstance(msg, wire.ChunkSynthesized):
            rec = sup.requests.get(msg.request_id)
            total = len(rec.chunks) if rec else "?"
            print(
                f"  chunk {msg.index + 1}/{total}: {msg.dur_s:5.2f} s of audio in {msg.synth_ms:6.1f} ms",
                file=sys.stderr,
            )
        elif isinstance(msg, wire.PlaybackStarted):
            print(f"  playback started, TTFA {msg.ttfa_ms:.0f} ms", file=sys.stderr)
        elif isinstance(msg, wire.Underrun):
            print(f"  underrun #{msg.count}", file=sys.stderr)
        elif isinstance(msg, wire.Error):
            print(f"  error [{msg.kind}] {msg.actor}: {msg.message}", file=sys.stderr)

    sup.listeners.append(show)
    try:
        sup.start()
        reply = sup.submit(wire.Speak(text=text, voice=args.voice or ""))[0]
        if isinstance(reply, wire.Error):
            print(f"skald speak: [{reply.kind}] {reply.message}", file=sys.stderr)
            return 2
        assert isinstance(reply, wire.Accepted)
        rec = sup.requests[reply.request_id]
        sup.run(until=lambda: rec.status != "active")
        if rec.status == "active":
            rec.status = "cancelled"
            rec.reason = sup.stop_reason or "interrupted"
        report = _report(sup, rec)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
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


def _report(sup: Supervisor, rec: RequestRecord) -> dict[str, Any]:
    # The span goes out as the wire's ChunkSpan fields, the same shape as in chunk_synthesized.
    chunks = [
        {
            "text": c.text,
            "est_s": c.est_s,
            "dur_s": c.dur_s,
            "synth_ms": c.synth_ms,
            "engine": c.engine,
            "span": msgspec.to_builtins(c.span) if c.span is not None else {},
        }
        for _, c in sorted(rec.chunks.items())
    ]
    audio_s = rec.audio_s or sum(c.dur_s for c in rec.chunks.values())
    synth_s = sum(c.synth_ms for c in rec.chunks.values()) / 1000.0
    worker = sup.children[wire.Role.TTS_WORKER].info
    return {
        "request_id": rec.request_id,
        "status": rec.status,
        "ttfa_ms": rec.ttfa_ms,
        "rtf": synth_s / audio_s if audio_s else 0.0,
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
    sup = _supervisor(args, overrides, shared_run_dir=True)
    sup.install_signal_handlers()
    try:
        sup.start()
        print(f"skald serving: control {sup.control_endpoint}  events {sup.events_endpoint}", flush=True)
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
        with SkaldClient(endpoint, events_endpoint=None, timeout_s=args.timeout) as client:
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
    # With events, the client returns once its subscription is proven live (see SkaldClient).
    return SkaldClient(
        args.endpoint or server.control, events_endpoint=server.events if events else None, timeout_s=args.timeout
    )


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
    from actors.cli.gpu import add_gpu_arguments, add_gpu_parser
    from actors.cli.voice import add_voice_parser, run_voice_command
    from actors.tts import ENGINES

    parser = argparse.ArgumentParser(prog="skald", description="Real-time streaming narration engine.")
    parser.add_argument("--config", help="TOML file overriding config/default.toml")
    parser.add_argument(
        "-v", "--verbose", action="store_const", dest="log_level", const=logging.DEBUG, default=logging.WARNING
    )
    parser.add_argument("--log-info", action="store_const", dest="log_level", const=logging.INFO)
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
    add_gpu_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    add_voice_parser(sub).set_defaults(func=lambda a: run_voice_command(a, _settings(a)))
    add_gpu_parser(sub)

    status = sub.add_parser("status", help="print a running server's status as JSON")
    status.add_argument("--endpoint", help="control endpoint (default: the serve run dir's control.sock)")
    status.add_argument("--run-dir", help="the server's run dir")
    status.add_argument("--timeout", type=float, default=2.0)
    status.set_defaults(func=cmd_status)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", help="control endpoint (default: the serve run dir's control.sock)")
        p.add_argument("--run-dir", help="the server's run dir")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server's reply")

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
    configure_logging(args.log_level)
    return int(args.func(args))
