"""Turn latency and the prelude -> narrative seam: figures, not pass/fail.

    scripts/bench turn [--json PATH] [--runs N] [--backend transformers|openai] [--sink wav|null]
                       [--model DIR] [--prelude-words N] [--narrative-tokens N]

Starts a real ``skald serve`` whose prelude and narrative actors run a language model
(``transformers``: the model directory in-process on CPU/GPU; ``openai``: a real
``transformers serve`` on 127.0.0.1 serving it), then runs N+1 turns one after another (the
first is a warm-up and is not counted). Without ``--model`` the model is ``tests/tiny_lm.py``'s
tiny random Qwen2, built locally: its text is gibberish and the figures are about the
plumbing's timing only, never about a real model's speed.

Figures (per turn, then summarised):

* ``turn_ttfa_ms``: the server's own TTFA of the turn, ``Accepted`` -> first audible sample of
  the prelude (``PlaybackStarted.ttfa_ms``; on the paced sinks the sample's scheduled DAC time).
  ``first_chunk_ms`` splits it: ``Accepted`` -> the first ``ChunkPlanned`` event reaching this
  client (language model + chunker; same machine, same monotonic clock).
* ``seam_gap_ms``: an upper bound on the silence the pipeline inserted at the prelude ->
  narrative hand-over, from the real-time paced WAV recording (``--sink wav``):

  - each turn's slice of the WAV is exact: the sink writes every block while a request is
    active and patches (hence flushes) the WAV header on every block, so the file size once it
    stops growing after a turn is where that turn ends;
  - ``inserted_ms`` = the slice's length minus the audio the turn played (``audio_s``): all the
    silence the consumer wrote for the turn (pre-buffer wait, underruns, the last block's
    padding of < 1 block), wherever it fell;
  - the seam's position is the audio time of the opener's last character (chunk durations
    from ``ChunkSynthesized``, characters spread evenly inside the chunk that holds it), and
    ``seam_zero_run_ms`` the longest run of exact-zero samples that starts within
    ``SEAM_TOLERANCE_S`` of it (recording clock minus the zero runs before it). Zero runs
    alone overcount: Piper renders some symbols of gibberish as exact digital silence
    (``control_zero_run_ms``: the same text spoken as one plain ``speak``);
  - ``seam_gap_ms`` = min(``seam_zero_run_ms``, ``inserted_ms``).

  With ``--sink null`` there is no recording and the seam gap is not measured.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEAM_TOLERANCE_S = 0.75
CONTEXT = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8").strip()
ACTIONS = (
    "I raise the torch and step inside.",
    "I call out into the dark.",
    "I kneel and study the floor.",
    "I draw my sword and wait.",
    "I follow the sound of the water.",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _start_lm_server(model: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("transformers")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(cli), "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: transformers serve exited; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    _stop(proc)
    raise SystemExit(f"bench: transformers serve not up after 120 s; see {log_path}")


def _collect(client: Any, rid: str, t_accepted: float) -> tuple[Any, list[Any], float]:
    """Events until the request's ``RequestFinished``, and when its first chunk was planned
    (ms after acceptance; client and server share the machine's monotonic clock)."""
    from actors import wire

    events: list[Any] = []
    first_chunk_ms = float("nan")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for event in client.events(timeout_s=1.0):
            now = time.monotonic()
            events.append(event)
            if getattr(event, "request_id", None) != rid:
                continue
            if isinstance(event, wire.ChunkPlanned) and event.index == 0:
                first_chunk_ms = (now - t_accepted) * 1000
            if isinstance(event, wire.RequestFinished):
                return event, events, first_chunk_ms
    raise SystemExit(f"bench: turn {rid} did not finish within 180 s")


def _wait_stable(path: Path, quiet_s: float = 0.4, timeout: float = 10.0) -> int:
    """The WAV's size once the sink has stopped writing (it writes only while not idle)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.05)
    return last


def _zero_runs(x: Any, rate: int) -> list[tuple[float, float]]:
    """(start_s, length_s) of every run of exact zeros in ``x``."""
    import numpy as np

    z = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    d = np.diff(z)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(s / rate, (e - s) / rate) for s, e in zip(starts, ends, strict=True)]


def _opener_end_s(opener: str, chunks: list[dict[str, Any]]) -> float:
    """Audio time (no gaps) at which the opener's last character is spoken."""
    need = len(_alnum(opener))
    t = 0.0
    for chunk in chunks:
        n = len(_alnum(chunk["text"]))
        if need <= n:
            return t + chunk["dur_s"] * (need / n if n else 1.0)
        need -= n
        t += chunk["dur_s"]
    return t


def _seam(samples: Any, rate: int, audio_s: float, opener: str, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    inserted = max(0.0, len(samples) / rate - audio_s)
    audible = np.flatnonzero(samples)
    if len(audible) == 0:
        return {"seam_gap_ms": float("nan"), "inserted_ms": round(inserted * 1000, 2)}
    lead = audible[0] / rate
    runs = _zero_runs(samples[audible[0] : audible[-1] + 1], rate)
    seam_s = _opener_end_s(opener, chunks)
    best = 0.0
    best_at = None
    removed = 0.0  # zero runs before the current one: recording clock -> audio clock
    for start, length in runs:
        if abs(start - removed - seam_s) <= SEAM_TOLERANCE_S and length > best:
            best, best_at = length, start
        removed += length
    return {
        "seam_gap_ms": round(min(best, inserted) * 1000, 2),
        "seam_zero_run_ms": round(best * 1000, 2),
        "seam_zero_run_at_s": None if best_at is None else round(lead + best_at, 3),
        "seam_at_audio_s": round(seam_s, 3),
        "inserted_ms": round(inserted * 1000, 2),
        "longest_zero_run_ms": round(max((r[1] for r in runs), default=0.0) * 1000, 2),
        "recorded_s": round(len(samples) / rate, 3),
    }


def bench_turn(args: argparse.Namespace) -> dict[str, Any]:
    from bench import run_folder  # scripts/bench.py, on sys.path when dispatched by scripts/bench

    with run_folder("skt", keep=args.keep) as parent:  # outlives the processes _turns stops
        return _turns(args, parent)


def _turns(args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    from bench import machine, percentile

    from actors import wire
    from actors.client import SkaldClient

    procs: list[subprocess.Popen[bytes]] = []
    try:
        model = args.model
        models = f"{model} (given)"
        if not model:
            from tests import tiny_lm

            model = str(tiny_lm.build(parent / "tiny-lm"))
            models = tiny_lm.DESCRIPTION
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
        env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        for role in ("PRELUDE", "NARRATIVE"):
            env[f"SKALD_ACTORS_{role}_BACKEND"] = args.backend
            env[f"SKALD_ACTORS_{role}_DEVICE"] = args.device
            env[f"SKALD_ACTORS_{role}_THREADS"] = str(args.threads)
        env["SKALD_ACTORS_PRELUDE_MAX_WORDS"] = str(args.prelude_words)
        env["SKALD_ACTORS_NARRATIVE_MAX_TOKENS"] = str(args.narrative_tokens)
        if args.backend == "openai":
            lm, endpoint = _start_lm_server(model, parent / "lm-server.log")
            procs.append(lm)
            for role in ("PRELUDE", "NARRATIVE"):
                env[f"SKALD_ACTORS_{role}_ENDPOINT"] = endpoint
                env[f"SKALD_ACTORS_{role}_MODEL"] = ""  # the server is pinned to the model
        else:
            for role in ("PRELUDE", "NARRATIVE"):
                env[f"SKALD_ACTORS_{role}_MODEL"] = model
        wav = parent / "turns.wav"
        sink = f"wav:{wav}" if args.sink == "wav" else "null"
        run_dir = parent / "run"
        log_path = parent / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "actors.cli", "--log-info", "serve", "--sink", sink, "--run-dir", str(run_dir)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        procs.append(server)
        assert server.stdout is not None
        line = server.stdout.readline()
        if b"skald serving" not in line:
            raise SystemExit(f"bench: server did not start; see {log_path}:\n{log_path.read_text()[-3000:]}")

        turns: list[dict[str, Any]] = []
        control: dict[str, Any] = {}
        offsets = [0]
        with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as client:  # returns once its subscription is live
            for i in range(args.runs + 1):
                reply = client.request(wire.Turn(context=CONTEXT, player_action=ACTIONS[i % len(ACTIONS)]))
                assert isinstance(reply, wire.Accepted)
                rid = reply.request_id
                finished, events, first_chunk_ms = _collect(client, rid, reply.t_accepted)
                if finished.status != "done":
                    raise SystemExit(f"bench: turn {i} ended {finished.status}: {finished.reason}")
                errors = [e for e in events if isinstance(e, wire.Error) and e.request_id == rid]
                if errors:
                    raise SystemExit(f"bench: turn {i}: {errors[0].kind}: {errors[0].message}")
                chunks: dict[int, dict[str, Any]] = {}
                for event in events:
                    if getattr(event, "request_id", None) != rid:
                        continue
                    if isinstance(event, wire.ChunkPlanned):
                        chunks.setdefault(event.index, {})["text"] = event.text
                    elif isinstance(event, wire.ChunkSynthesized):
                        chunks.setdefault(event.index, {})["dur_s"] = event.dur_s
                if args.sink == "wav":
                    offsets.append(_wait_stable(wav))
                found = re.search(rf"turn {rid} opener \(\d+ words\): (.+)$", log_path.read_text(), re.MULTILINE)
                opener = ast.literal_eval(found.group(1)) if found else ""
                turns.append(
                    {
                        "request_id": rid,
                        "ttfa_ms": round(finished.ttfa_ms, 2),
                        "first_chunk_ms": round(first_chunk_ms, 2),
                        "underruns": finished.underruns,
                        "audio_s": round(finished.audio_s, 3),
                        "opener": opener,
                        "opener_words": len(opener.split()),
                        "chunks": [chunks[k] for k in sorted(chunks)],
                    }
                )
                print(
                    f"  turn {i}/{args.runs}{' (warm-up)' if i == 0 else ''}: TTFA {finished.ttfa_ms:6.1f} ms "
                    f"(first chunk planned at {first_chunk_ms:5.1f} ms), "
                    f"{finished.audio_s:5.2f} s of audio, underruns {finished.underruns}",
                    file=sys.stderr,
                )
            if args.sink == "wav":
                # Control: the last turn's text spoken as plain text (all of it known at once).
                text = " ".join(c["text"] for c in turns[-1]["chunks"])
                rid = client.speak(text)
                finished, _ = client.wait_for(rid, timeout_s=180)
                offsets.append(_wait_stable(wav))
                control = {"audio_s": round(finished.audio_s, 3)}
        _stop(server)
        procs.remove(server)
        if args.sink == "wav":
            import numpy as np

            with wave.open(str(wav)) as w:
                rate = w.getframerate()
                data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            header = 44  # RIFF header of a PCM WAV written by the wave module
            bounds = [max(0, (o - header) // 2) for o in offsets]
            for n, turn in enumerate(turns):
                samples = data[bounds[n] : bounds[n + 1]]
                turn.update(_seam(samples, rate, turn["audio_s"], turn["opener"], turn["chunks"]))
            ctl = data[bounds[-2] : bounds[-1]]
            audible = np.flatnonzero(ctl)
            if len(audible):
                inner = ctl[audible[0] : audible[-1] + 1]
                control["zero_run_ms"] = round(max((r[1] for r in _zero_runs(inner, rate)), default=0.0) * 1000, 2)
        counted = turns[1:]
        ttfas = [t["ttfa_ms"] for t in counted]
        gaps = [t["seam_gap_ms"] for t in counted if "seam_gap_ms" in t]
        inserted = [t["inserted_ms"] for t in counted if "inserted_ms" in t]
        runs = [t["seam_zero_run_ms"] for t in counted if "seam_zero_run_ms" in t]
        first_chunk = [t["first_chunk_ms"] for t in counted]
        return {
            "benchmark": "turn",
            "machine": machine(),
            "models": models,
            "backend": args.backend,
            "device": args.device,
            "threads": args.threads,
            "engine": "piper",
            "weights": "tts: real (piper joe-us); language model: "
            + ("tiny random Qwen2, built locally (gibberish): timing only" if not args.model else args.model),
            "sink": sink if args.sink == "null" else "wav (paced)",
            "runs": args.runs,
            "prelude_max_words": args.prelude_words,
            "narrative_max_tokens": args.narrative_tokens,
            "turn_ttfa_ms_p50": round(percentile(ttfas, 0.5), 2),
            "turn_ttfa_ms_p95": round(percentile(ttfas, 0.95), 2),
            "turn_ttfa_ms_all": ttfas,
            "first_chunk_ms_p50": round(percentile(first_chunk, 0.5), 2),
            "seam_gap_ms_max": round(max(gaps), 2) if gaps else None,
            "seam_gap_ms_all": gaps,
            "inserted_ms_max": round(max(inserted), 2) if inserted else None,
            "seam_zero_run_ms_max": round(max(runs), 2) if runs else None,
            "control_zero_run_ms": control.get("zero_run_ms"),
            "underruns": sum(t["underruns"] for t in counted),
            "opener_words": [t["opener_words"] for t in counted],
            "turns": turns,
        }
    finally:
        for proc in procs:
            _stop(proc)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench turn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--runs", type=int, default=5, help="turns measured (after one warm-up turn)")
    parser.add_argument("--backend", choices=("transformers", "openai"), default="transformers")
    parser.add_argument("--sink", choices=("wav", "null"), default="wav", help="wav: paced recording (seam gap)")
    parser.add_argument("--model", default="", help="local model dir (default: the tiny random test model)")
    parser.add_argument("--device", default="cpu", help="transformers backend: cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per text actor (0 = torch default)")
    parser.add_argument("--prelude-words", type=int, default=12)
    parser.add_argument("--narrative-tokens", type=int, default=48)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (recording, logs) after a good run too")
    args = parser.parse_args(argv)
    result = bench_turn(args)
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}, indent=2))
    m = result["machine"]
    print(
        f"\nskald turn on {m['cpu']} ({m['cores']} cores), backend {result['backend']}, model: {result['models']}:\n"
        f"  turn TTFA p50 {result['turn_ttfa_ms_p50']:.1f} ms, p95 {result['turn_ttfa_ms_p95']:.1f} ms | "
        f"first chunk planned p50 {result['first_chunk_ms_p50']:.1f} ms\n"
        f"  seam gap max {result['seam_gap_ms_max']} ms (inserted silence max {result['inserted_ms_max']} ms, "
        f"zero run at the seam max {result['seam_zero_run_ms_max']} ms, "
        f"Piper control {result['control_zero_run_ms']} ms) | underruns {result['underruns']}",
        file=sys.stderr,
    )
    from bench import write_json

    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.exit(main(sys.argv[1:]))
