"""A burst of control traffic: ``scripts/bench load [--messages N] [--clients C] [--seconds S] [--json PATH]``.

C clients (default 8) send N messages (default 1,000) in S seconds (default 10) to a real
``skald serve`` (null sink): speak (plain and streamed), append to their streamed requests,
cancel their requests, status. Every message must be answered (``accepted``, ``status`` or an
``error`` reply: an append to a request that has just ended is a fair error). Afterwards the
final state must be right: nothing active, the ring empty, and the next request plays to its end;
and the processes' memory is reported before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ServedSkald, run_folder  # noqa: E402

from actors import wire  # noqa: E402
from actors.client import SkaldClient, SkaldClientError  # noqa: E402

LINES = ["The torch gutters.", "A door slams somewhere below.", "Roll for initiative.", "The bridge sways."]


def rss_mb(run_dir: Path, server_pid: int) -> dict[str, float]:
    import psutil

    with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as ctl:
        actors = ctl.status()["actors"]
    sizes = {role: float(a["metrics"].get("rss_mb", 0.0)) for role, a in actors.items()}
    sizes["supervisor"] = psutil.Process(server_pid).memory_info().rss / 1e6
    return {k: round(v, 1) for k, v in sorted(sizes.items())}


def client_loop(run_dir: Path, n: int, seconds: float, seed: int, out: dict[str, Any]) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    streaming: list[str] = []
    answered = unanswered = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    with SkaldClient.for_run_dir(str(run_dir), timeout_s=5) as ctl:
        t0 = time.monotonic()
        for i in range(n):
            wait = t0 + seconds * i / n - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            roll = rng.random()
            if roll < 0.3 or not mine:
                stream = rng.random() < 0.4
                msg: wire.Message = wire.Speak(text=rng.choice(LINES), streaming=stream)
            elif roll < 0.55 and streaming:
                msg = wire.Append(request_id=rng.choice(streaming), text=" " + rng.choice(LINES))
            elif roll < 0.65 and streaming:
                msg = wire.End(request_id=streaming.pop(rng.randrange(len(streaming))))
            elif roll < 0.85:
                msg = wire.Cancel(request_id=rng.choice(mine))
            else:
                msg = wire.StatusQuery()
            t = time.monotonic()
            try:
                reply = ctl.send_raw(wire.encode(msg))
            except SkaldClientError:
                unanswered += 1
                continue
            latencies.append((time.monotonic() - t) * 1000.0)
            answered += 1
            if isinstance(reply, wire.Error):
                errors[reply.kind] = errors.get(reply.kind, 0) + 1
            elif isinstance(msg, wire.Speak) and isinstance(reply, wire.Accepted):
                mine.append(reply.request_id)
                if msg.streaming:
                    streaming.append(reply.request_id)
        for request_id in streaming:  # close what is still open, so every request can end
            try:
                ctl.send_raw(wire.encode(wire.End(request_id=request_id)))
            except SkaldClientError:
                unanswered += 1
    out.update(answered=answered, unanswered=unanswered, errors=errors, latencies=latencies, requests=len(mine))


def bench_load(args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    run_dir = parent / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    with ServedSkald(parent, "null", env, "bench load") as server:
        before = rss_mb(run_dir, server.pid)
        per = args.messages // args.clients
        results: list[dict[str, Any]] = [{} for _ in range(args.clients)]
        threads = [
            threading.Thread(target=client_loop, args=(run_dir, per, args.seconds, i, results[i]))
            for i in range(args.clients)
        ]
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        burst_s = time.monotonic() - t0
        with SkaldClient.for_run_dir(str(run_dir), timeout_s=10) as ctl:
            ctl.cancel(all=True)
            deadline = time.monotonic() + 60
            status = ctl.status()
            while status["requests"] and time.monotonic() < deadline:
                time.sleep(0.1)
                status = ctl.status()
            settle = time.monotonic() + 5  # the fades of the last cancels leave the ring
            while status["ring"].get("buffered_s", 0) > 0 and time.monotonic() < settle:
                time.sleep(0.05)
                status = ctl.status()
            active_after = len(status["requests"])
            ring_after = status["ring"].get("buffered_s")
            probe = ctl.speak("The dust settles.")
            finished, _ = ctl.wait_for(probe, timeout_s=60)
        after = rss_mb(run_dir, server.pid)
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for kind, count in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    from bench import machine

    return {
        "benchmark": "load",
        "machine": machine(),
        "clients": args.clients,
        "messages": per * args.clients,
        "burst_s": round(burst_s, 2),
        "answered": sum(r["answered"] for r in results),
        "unanswered": sum(r["unanswered"] for r in results),
        "error_replies": errors,
        "requests_opened": sum(r["requests"] for r in results),
        "reply_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
        "reply_ms_max": round(max(latencies), 2) if latencies else None,
        "active_after": active_after,
        "ring_buffered_s_after": ring_after,
        "next_request": finished.status,
        "rss_mb_before": before,
        "rss_mb_after": after,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench load")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    with run_folder("skl", "bench load") as parent:  # kept, server.log and all, when the run fails
        result = bench_load(args, parent)
        print(json.dumps(result, indent=2))
        print(
            f"load: {result['answered']}/{result['messages']} answered in {result['burst_s']} s from "
            f"{result['clients']} clients (reply p50 {result['reply_ms_p50']} ms, max {result['reply_ms_max']} ms); "
            f"after: {result['active_after']} active, ring {result['ring_buffered_s_after']} s, next request "
            f"{result['next_request']}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        ok = result["unanswered"] == 0 and result["active_after"] == 0 and result["next_request"] == "done"
        if not ok:
            raise SystemExit(1)
    return 0
