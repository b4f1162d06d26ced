"""``skald voice add|list|remove``: the command line over ``actors.tts.voices.VoiceProfileStore``;
``skald voice calibrate``: streaming Piper's per-machine profile (``actors.tts.piper_streaming``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from actors.cli.progress import interactive, spinner
from actors.tts.voices import SUGGESTED_REF_SECONDS, VoiceProfileError, VoiceProfileStore, validate_voice_name
from config.settings import Settings


def add_voice_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``voice add|list|remove`` to a top-level ``add_subparsers()`` object; returns the parser."""
    voice = subparsers.add_parser("voice", help="manage voices: XTTS voice profiles and installed Piper voices")
    sub = voice.add_subparsers(dest="voice_command", required=True)
    add = sub.add_parser("add", help="make an XTTS voice profile from reference recordings (computed once)")
    add.add_argument("name", help="profile name: letters, digits, _ . -")
    add.add_argument("refs", nargs="+", metavar="REF", help="reference audio (WAV/FLAC/OGG), ideally 6-30 s of speech")
    add.add_argument("--model-dir", help="XTTS model directory (default: xtts.model_dir)")
    add.add_argument("--device", choices=("cuda", "cpu"), help="default: xtts.device, or cpu when CUDA is unusable")
    add.add_argument("--replace", action="store_true", help="overwrite an existing profile of that name")
    add.add_argument("--quiet", "-q", action="store_true", help="no progress spinners on the terminal")
    listing = sub.add_parser("list", help="list XTTS voice profiles and installed Piper voices")
    listing.add_argument("--json", action="store_true", help="one JSON object per voice")
    remove = sub.add_parser("remove", help="delete an XTTS voice profile")
    remove.add_argument("name")
    calibrate = sub.add_parser(
        "calibrate", help="measure streaming Piper's margins and decode schedule on this machine (stored, reused)"
    )
    calibrate.add_argument("voice", nargs="?", default="", help="Piper voice (default: tts.voice)")
    calibrate.add_argument(
        "--safety", type=float, default=2.0, help="plan for a machine this many times slower (default 2)"
    )
    calibrate.add_argument("--json", action="store_true", help="print the stored profile as JSON at the end")
    decoder = calibrate.add_mutually_exclusive_group()
    decoder.add_argument(
        "--cached-decoder",
        dest="cached_decoder",
        action="store_true",
        default=None,
        help="(re-)export the cached-state decoder (needs torch) and calibrate it; by default it is "
        "exported once when torch is installed",
    )
    decoder.add_argument(
        "--windowed",
        dest="cached_decoder",
        action="store_false",
        help="calibrate the windowed decoder (ignore an exported cached-state one)",
    )
    return voice


def _voice_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Streaming Piper's calibration for one voice, progress on stdout, profile in the cache."""
    from dataclasses import asdict

    from actors.tts.base import EngineError
    from actors.tts.piper_streaming import StreamingPiperEngine, default_cache_dir
    from actors.tts.piper_streaming_calibrate import calibrate_voice

    if not 1.0 <= args.safety <= 10.0:
        raise VoiceProfileError(f"--safety {args.safety:g}: must be between 1 and 10")
    voice = args.voice or settings.tts.voice
    engine = StreamingPiperEngine(
        cache_dir=default_cache_dir(settings.tts.piper_cache_dir), use_cached_decoder=args.cached_decoder is not False
    )
    try:
        print(f"calibrating streaming Piper for {voice!r} on this machine (about a minute of full CPU)", flush=True)
        profile, path, error = calibrate_voice(
            engine, voice, safety=args.safety, verbose=True, cached_decoder=args.cached_decoder
        )
        stream = engine.streams[voice]
    except EngineError as exc:
        raise VoiceProfileError(str(exc)) from None
    finally:
        engine.close()
    print(f"\nprofile written to {path}")
    print(profile.describe())
    print(f"  max |streamed - full decode| = {error:.2e}; decoder {stream.decoder}")
    if args.json:
        print(json.dumps(asdict(profile)))
    return 0


def _voice_add(args: argparse.Namespace, settings: Settings, store: VoiceProfileStore) -> int:
    from actors.tts.base import EngineError
    from actors.tts.xtts import RANDOM_NOTE, XttsEngine, cuda_usable

    validate_voice_name(args.name)
    if store.exists(args.name) and not args.replace:
        raise VoiceProfileError(f"voice {args.name!r} already exists in {store.dir}; use --replace or remove it first")
    device = args.device or settings.xtts.device
    if args.device is None and device == "cuda" and not cuda_usable():
        device = "cpu"  # conditioning is a one-off: a few seconds on CPU
        print("skald voice add: CUDA unusable here, computing on cpu", file=sys.stderr)
    model_dir = args.model_dir or settings.xtts.model_dir
    shown = interactive(args.quiet)  # spinners with elapsed time on a terminal's stderr
    try:
        with spinner(f"loading XTTS v2 model from {model_dir or '(xtts.model_dir unset)'} on {device}", shown):
            engine = XttsEngine(
                model_dir,
                device=device,
                language=settings.xtts.language,
                voices_dir=store.dir,
                warmup=False,
            )
    except EngineError as exc:
        raise VoiceProfileError(str(exc)) from None
    try:
        refs = len(args.refs)
        with spinner(f"computing {args.name!r}'s conditioning latents from {refs} reference(s) on {device}", shown):
            profile = store.add(args.name, args.refs, engine, replace=args.replace)
    except EngineError as exc:
        raise VoiceProfileError(str(exc)) from None
    finally:
        engine.close()
    total = sum(r.duration_s for r in profile.refs)
    note = f" ({RANDOM_NOTE})" if profile.model.get("random_weights") else ""
    print(f"added XTTS voice {profile.name!r}: {len(profile.refs)} reference(s), {total:.1f} s -> {profile.path}{note}")
    if total < SUGGESTED_REF_SECONDS:
        print(f"note: {total:.1f} s of reference audio; about {SUGGESTED_REF_SECONDS:.0f} s or more clones better")
    return 0


def _voice_rows(store: VoiceProfileStore) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in store.list():
        rows.append(
            {
                "name": p.name,
                "engine": p.engine,
                "sample_rate": p.sample_rate,
                "created": p.created,
                "refs": [Path(r.file).name for r in p.refs],
                "random_weights": bool(p.model.get("random_weights")),
            }
        )
    from actors.tts.piper import PiperEngine, voice_sample_rate

    for name in PiperEngine().list_voices():
        try:
            rate: int | None = voice_sample_rate(name)
        except (OSError, ValueError, KeyError):
            rate = None
        rows.append({"name": name, "engine": "piper", "sample_rate": rate, "created": "", "refs": []})
    return rows


def _voice_list(args: argparse.Namespace, store: VoiceProfileStore) -> int:
    rows = _voice_rows(store)
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    print(f"{'NAME':<24} {'ENGINE':<6} {'RATE':>6}  {'CREATED':<20}  REFS")
    for row in rows:
        refs = f"{len(row['refs'])}: {', '.join(row['refs'])}" if row["refs"] else "-"
        if row.get("random_weights"):
            refs += "  [random weights: timing only]"
        rate = str(row["sample_rate"] or "?")
        print(f"{row['name']:<24} {row['engine']:<6} {rate:>6}  {row['created'] or '-':<20}  {refs}")
    print(f"(profiles in {store.dir})")
    return 0


def run_voice_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``skald voice add|list|remove``; errors are printed as one line, exit status 1."""
    store = VoiceProfileStore.from_settings(settings)
    try:
        if args.voice_command == "add":
            return _voice_add(args, settings, store)
        if args.voice_command == "list":
            return _voice_list(args, store)
        if args.voice_command == "calibrate":
            return _voice_calibrate(args, settings)
        if args.voice_command == "remove":
            store.remove(args.name)
            print(f"removed voice {args.name!r} from {store.dir}")
            return 0
    except (VoiceProfileError, OSError) as exc:  # OSError: the store directory is not writable, say
        print(f"skald voice {args.voice_command}: {exc}", file=sys.stderr)
        return 1
    print(f"skald voice: unknown command {args.voice_command!r}", file=sys.stderr)
    return 2
