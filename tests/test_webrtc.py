"""Browsers hear the narration (issue 13): WHEP sessions, the player page, real headless Chromium.

Two kinds of tests:

* WHEP and the page from a plain HTTP client against a real ``skald serve --http`` (the offers
  come from a real aiortc peer connection): status codes, the key rule, the listener limit.
* Real browsers (``device`` mark): ``tests/webrtc_scenario.py`` runs inside a private network
  namespace (``unshare -n``, loopback only) with a PulseAudio null sink for skald's device and one
  per Chromium; the assertions here read what it recorded. Each browser's recording is checked
  against the reference narration (raw Piper of the same chunk plan, built from the server's
  events) with the device tests' window-score check; getStats series show packet loss and
  concealment.

Opus is lossy, so a browser's faithful 100 ms windows score lower than the device's (measured
median 0.97, the odd window down to 0.84 after the 4 kHz low-pass); a slip of 2-20 ms drops the
windows after it to ~0.1, so the bound for browsers is 0.75 per window and 0.95 overall.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio_rig import align
from tests.browser_rig import BROWSER_STREAM, DEVICE_STREAM, machine_stalls, near_a_stall, neteq_hold_s
from tests.conftest import ROOT, SESSION_ID, SESSION_VAR, Server, wait_until
from tests.test_http import KEY, free_port
from tests.test_speech_output import DETERMINISTIC, _lowpass, _window_scores

RATE = 22050


def _chromium_leftovers() -> list[str]:
    """Browsers (and their profile and temp dirs) of tests/browser_rig.py still around."""
    import glob

    import psutil

    found = glob.glob(os.path.join(tempfile.gettempdir(), "skald-chromium-*"))
    found += glob.glob(os.path.join(tempfile.gettempdir(), "org.chromium.Chromium.*"))  # Chromium's own temp
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any("skald-chromium-" in part for part in proc.info["cmdline"] or []):
                found.append(f"pid {proc.info['pid']}")
    return found


@pytest.fixture(autouse=True)
def no_browser_left() -> Iterator[None]:
    """The leak check for browsers (conftest's covers skald's processes, shm and run dirs; a web
    actor whose aiortc tasks did not end would be a process left there)."""
    before = set(_chromium_leftovers())
    yield
    left: list[str] = []

    def gone() -> bool:
        nonlocal left
        left = [x for x in _chromium_leftovers() if x not in before]
        return not left

    wait_until(gone, timeout=10.0)
    assert not left, f"browsers left behind: {left}"


# ------------------------------------------------------------------------------------------- WHEP
def _offer_sdp() -> str:
    """A real browser-shaped offer: an aiortc peer connection with one recvonly audio transceiver."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def keyed(make_server: Callable[..., Server]) -> Iterator[int]:
    port = free_port()
    make_server("--sink", "null", "--http", f"127.0.0.1:{port}", SKALD_WEB_API_KEY=KEY,
                SKALD_WEB_MAX_LISTENERS="1", **DETERMINISTIC)  # fmt: skip
    yield port


def test_whep_answers_201_with_location_and_enforces_key_type_and_limit(keyed: int) -> None:
    port = keyed
    auth = {"Authorization": f"Bearer {KEY}"}
    sdp = _offer_sdp().encode()
    status, _, body = _request(port, "POST", "/whep", sdp, {"Content-Type": "application/sdp"})
    assert status == 401 and b"API key" in body
    status, _, body = _request(port, "POST", "/whep", sdp, {**auth, "Content-Type": "application/json"})
    assert status == 415 and b"application/sdp" in body
    status, _, body = _request(port, "POST", "/whep", b"hello", {**auth, "Content-Type": "application/sdp"})
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_sdp"
    video_only = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    status, _, body = _request(port, "POST", "/whep", video_only, {**auth, "Content-Type": "application/sdp"})
    assert status == 422 and b"audio" in body
    status, headers, answer = _request(port, "POST", "/whep", sdp, {**auth, "Content-Type": "application/sdp"})
    assert status == 201, answer
    assert headers["content-type"].startswith("application/sdp")
    location = headers["location"]
    assert location.startswith("/whep/")
    text = answer.decode()
    assert text.startswith("v=0") and "m=audio" in text and "opus/48000" in text.lower()
    assert "a=sendonly" in text and "127.0.0.1" in text  # a loopback host candidate is offered
    # web.max_listeners = 1: the second listener gets a clear 503 with Retry-After.
    status, headers, body = _request(port, "POST", "/whep", _offer_sdp().encode(),
                                     {**auth, "Content-Type": "application/sdp"})  # fmt: skip
    assert status == 503 and headers.get("retry-after") == "5"
    assert "web.max_listeners" in json.loads(body)["error"]["message"]
    status, _, _ = _request(port, "PATCH", location, b"", auth)
    assert status == 405
    status, _, _ = _request(port, "DELETE", location, b"", {})
    assert status == 401
    status, _, body = _request(port, "DELETE", location, b"", auth)
    assert status == 200 and json.loads(body)["status"] == "ended"
    status, _, _ = _request(port, "DELETE", location, b"", auth)
    assert status == 404
    # The slot is free again.
    status, headers, _ = _request(port, "POST", "/whep", sdp, {**auth, "Content-Type": "application/sdp"})
    assert status == 201
    _request(port, "DELETE", headers["location"], b"", auth)


def test_player_page_loads_without_a_key_and_the_api_behind_it_needs_one(keyed: int) -> None:
    port = keyed
    status, headers, page = _request(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    html = page.decode()
    for needle in ('id="connect"', 'id="stop"', 'id="volume"', 'id="text"', 'id="bargein"', 'id="key"',
                   "/player/player.js", 'aria-live="polite"'):  # fmt: skip
        assert needle in html, needle
    assert "http://" not in html and "https://" not in html  # no CDN
    status, headers, script = _request(port, "GET", "/player/player.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"/whep" in script and b"Authorization" in script
    assert _request(port, "GET", "/player/../webrtc.py")[0] in (400, 401, 404)
    assert _request(port, "GET", "/v1/stage")[0] == 401
    status, _, body = _request(port, "GET", "/v1/stage", headers={"Authorization": f"Bearer {KEY}"})
    stage = json.loads(body)
    assert status == 200 and stage["listeners"] == 0 and "underruns" in stage and stage["state"]


def test_a_listener_that_never_connects_is_dropped_after_the_timeout(make_server: Callable[..., Server]) -> None:
    """An offer answered but never followed by ICE (the page closed at once): the session is
    dropped after web.listener_timeout_s and its slot freed."""
    port = free_port()
    make_server("--sink", "null", "--http", f"127.0.0.1:{port}", SKALD_WEB_LISTENER_TIMEOUT_S="1.5")

    def stage() -> dict[str, Any]:
        return dict(json.loads(_request(port, "GET", "/v1/stage")[2]))

    status, _, _ = _request(port, "POST", "/whep", _offer_sdp().encode(), {"Content-Type": "application/sdp"})
    assert status == 201
    assert stage()["listeners"] == 1
    assert wait_until(lambda: stage()["listeners"] == 0, timeout=30.0), stage()
    after = stage()
    assert after["listeners_timed_out"] == 1
    # Its queue filled with stage frames nobody pulled: those drops stay counted after it left (a
    # counter that fell back when a session ended would read as no loss to a scraper's rate()).
    assert after["stage_frames"] > 0 and after["listener_frames_dropped"] > 0, after


def test_a_whep_client_on_another_origin_reads_the_session_location(make_server: Callable[..., Server]) -> None:
    """With web.cors_origins set, a page served elsewhere (a web VTT) can listen: the 201's Location,
    which it needs to DELETE its session, is exposed to its script; an origin not listed gets no
    CORS grant."""
    port = free_port()
    make_server("--sink", "null", "--http", f"127.0.0.1:{port}", SKALD_WEB_CORS_ORIGINS="https://vtt.example")
    sdp = _offer_sdp().encode()
    status, headers, _ = _request(port, "POST", "/whep", sdp,
                                  {"Content-Type": "application/sdp", "Origin": "https://vtt.example"})  # fmt: skip
    assert status == 201
    assert headers["access-control-allow-origin"] == "https://vtt.example"
    assert "location" in headers["access-control-expose-headers"].lower().split(", ")
    assert _request(port, "DELETE", headers["location"], b"", {"Origin": "https://vtt.example"})[0] == 200
    elsewhere = {"Content-Type": "application/sdp", "Origin": "https://elsewhere.example"}
    status, headers, _ = _request(port, "POST", "/whep", sdp, elsewhere)
    assert "access-control-allow-origin" not in headers
    if status == 201:
        _request(port, "DELETE", headers["location"])


# ------------------------------------------------------------------------------ real browsers
def run_scenario(name: str, out: Path, timeout_s: float = 420.0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``tests/webrtc_scenario.py NAME`` under ``unshare -n``; its result and recordings."""
    missing = [b for b in ("unshare", "chromium", "nft", "pulseaudio", "parec") if shutil.which(b) is None]
    assert not missing, f"missing {missing}: run scripts/install-audio-deps (it installs chromium and nftables)"
    env = {**os.environ, SESSION_VAR: SESSION_ID, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.webrtc_scenario", name, str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    print(f"web actor: {result.get('web_metrics')}")  # late, skipped and dropped frames, shown with a failure
    assert proc.returncode == 0, f"{result.get('error')}\n{proc.stderr[-3000:]}\n{result.get('server_log_tail')}"
    with np.load(out / "audio.npz") as data:
        audio = {k: data[k] for k in data.files}
    return result, audio


def stats_after(series: list[dict[str, Any]], t_from: float, t_to: float = float("inf")) -> dict[str, float]:
    """Growth of each counter between the first sample at or after ``t_from`` (wall s) and the last
    sample at or before ``t_to``."""
    window = [s for s in series if t_from * 1000 <= s["t"] <= t_to * 1000]
    assert len(window) >= 2, f"no stats between {t_from} and {t_to}"
    first, last = window[0], window[-1]
    return {k: last[k] - first[k] for k in first if k != "t"} | {"packetsLost_total": last["packetsLost"]}


def concealments(series: list[dict[str, Any]], since: float, marks: dict[str, Any]) -> list[tuple[float, int | str]]:
    """(s after ``since``, samples) of each getStats interval after ``since`` that concealed, for a
    failure message, with the scenario's marks (s after ``since``, name) on the same scale."""
    found: list[tuple[float, int | str]] = [
        (round(b["t"] / 1000 - since, 2), int(b["concealedSamples"] - a["concealedSamples"]))
        for a, b in itertools.pairwise(series)
        if b["t"] / 1000 >= since and b["concealedSamples"] > a["concealedSamples"]
    ]
    found += [(round(t - since, 2), name) for name, t in marks.items() if isinstance(t, float)]
    return sorted(found, key=lambda x: x[0])


def hold_s(result: dict[str, Any], name: str, before: float) -> float:
    """``browser_rig.neteq_hold_s`` of ``name``'s getStats, which must have samples there."""
    held = neteq_hold_s(result["stats"][name], before)
    assert held is not None, f"{name}: no getStats samples in the second before {before}"
    return held


def stretch_allowance_s(span: dict[str, float]) -> float:
    """How far a recording may slide against the reference over a ``stats_after`` span: what
    Chromium reports stretching there (samples at 48 kHz) + 2 ms; a gap or lost speech of
    skald's own moves it further."""
    return (span["inserted"] + span["removed"]) / 48000 + 0.002


def stalls_in(result: dict[str, Any], t0: float, t_to: float | None, stream: str) -> list[tuple[float, float]]:
    """The stalls of the machine (``machine_stalls``) that starved ``stream``'s player between wall
    times ``t0`` and ``t_to``, in s from ``t0`` (a clip's start: where each may slide that clip)."""
    end = float("inf") if t_to is None else t_to
    stalls = machine_stalls(result.get("pulse_underruns", []), stream)
    return [(first - t0, last - t0) for first, last in stalls if last >= t0 and first <= end]


def _stalls_text(stalls: Sequence[tuple[float, float]]) -> str:
    return ", ".join(f"{first:.2f} s ({1000 * (last - first):.0f} ms)" for first, last in stalls) or "no point"


def unexplained_concealment(result: dict[str, Any], name: str, since: float, until: float = float("inf")) -> int:
    """Samples ``name``'s browser concealed between two wall times, less those concealed in a getStats
    interval that ends within 1 s after a stall of the machine (``machine_stalls``: a machine that
    did not run the players in time did not run the web actor's sends or the browser's decoder in
    time either); the excused ones are printed."""
    stalls = machine_stalls(result.get("pulse_underruns", []))
    total = 0
    for a, b in itertools.pairwise(result["stats"][name]):
        concealed = int(b["concealedSamples"] - a["concealedSamples"])
        if not since <= b["t"] / 1000 <= until or concealed <= 0:
            continue
        t = b["t"] / 1000
        stall = near_a_stall(t, stalls)
        if stall is None:
            total += concealed
        else:
            print(f"{name}: {concealed} samples concealed {t - stall[0]:.2f} s after the machine stalled "
                  f"({1000 * (stall[1] - stall[0]):.0f} ms, PulseAudio's underruns): not counted")  # fmt: skip
    return total


def clip(
    result: dict[str, Any], audio: dict[str, np.ndarray], name: str, t_from: float, t_to: float | None = None
) -> tuple[np.ndarray, float]:
    """``name``'s recording between two wall times, and the wall time of its first sample: each
    reference is looked for only where its request played (the long narration starts with the
    short one's sentences, so a whole-recording search could find the wrong one)."""
    t0, rec = result["rec_t0"][name], audio[f"rec_{name}"]
    lo = max(0, int((t_from - t0) * RATE))
    hi = len(rec) if t_to is None else min(len(rec), int((t_to - t0) * RATE))
    return rec[lo:hi], t0 + lo / RATE


def first_packet_t(series: list[dict[str, Any]]) -> float:
    return next(s["t"] for s in series if s["packetsReceived"] > 0) / 1000.0


def check_browser_plays(reference: np.ndarray, recording: np.ndarray, min_windows: int = 30) -> tuple[int, float]:
    """The browser recording holds ``reference`` whole and unslipped; (offset, worst window score)."""
    offset, score = align(reference, recording, RATE)
    assert score >= 0.95, f"correlation {score:.4f}"
    # The browser's path is a codec and a jitter buffer, not a fixed resampling delay: one fraction
    # of a sample for the whole recording fits it no better (measured: worst window 0.65 with, 0.83
    # without), so the windows are compared at the integer offset.
    scores = _window_scores(reference, recording, offset, RATE, subsample_align=False)
    assert len(scores) > min_windows
    # Opus distorts some 100-ms windows with nothing slipped (measured: worst 0.839-0.878, median
    # 0.97, every window's best lag within 3 samples of the global offset; which window suffers
    # depends on where the narration falls in the 20-ms frame grid; one window of the short
    # narration, at 2.0 s, scored 0.75-0.90 in all 12 recordings of four runs examined, and 0.743
    # in a failed one; the CI run at b1fb15f failed once on a window at 0.743 too).
    # A slip of 2, 5 or 20 ms inserted into the same recordings took every window after it to a
    # median of ~0.1 (worst -0.5). So a window below 0.75 fails when its neighbour is below it
    # too (what a slip does), and any window below 0.5 fails alone.
    worst = min(scores, key=lambda item: item[1])
    where = f"the browser's recording departs from the reference at {worst[0]:.2f} s ({worst[1]:.3f})"
    assert worst[1] >= 0.5, where
    for (t, score), (_, after) in itertools.pairwise(scores):
        assert score >= 0.75 or after >= 0.75, f"the browser's recording departs from the reference at {t:.2f} s"
    return offset, worst[1]


def check_browser_hears_stretched(
    reference: np.ndarray,
    recording: np.ndarray,
    max_drift_s: float = 0.15,
    stalls: Sequence[tuple[float, float]] = (),
) -> tuple[int, float]:
    """The browser recording holds ``reference`` whole though Chromium's jitter buffer time-stretched
    it (NetEq inserts or removes pitch periods to grow or shrink its buffer, counted in getStats as
    insertedSamplesForDeceleration / removedSamplesForAcceleration): the content is all there, but
    the recording slides against the reference by what was stretched, which the fixed-offset window
    check reads as a slip. Returns the final slide (s).

    Every voiced 100-ms window of ``reference`` is looked for a little around where the previous
    matched window predicts (the slide so far, +-(max_drift_s + 1 ms)); a match (>= 0.75, the fixed
    check's bound) moves the prediction. The slide must stay within ``max_drift_s``; a window that
    holds a stretch point matches nowhere (measured 0.18-0.6), so one at a time and one in ten
    overall may miss. Speech lost, doubled or replaced beyond that fails: a gap moves the slide past
    the stretch Chromium reported, two windows in a row missing fail.

    The first second anchors the search. NetEq sheds a jitter buffer that grew in a silence (all
    three browsers' grew by ~45 ms at once in a 50-ms stall of the whole VM; it stays there through
    the silence) by accelerating the next speech's first second, which then matches one offset at
    only 0.79-0.81 while every window of it is there (three-listener runs, 2026-12-01). So with
    stretch allowed the anchor needs 0.5 (unrelated speech scores < 0.3), and the windows from the
    first one on decide. Returns (where the first voiced window is in the recording: the onset,
    the final slide in s).

    ``stalls`` (s from the recording's start; ``stalls_in``): where the machine stalled the
    player, whose recording then slides by as long. In the windows next to a stall (100 ms either
    side) the slide may change by up to that stall's length more; elsewhere, before and after
    it, as without stalls (a gap of skald's own away from a stall still fails). The slide is
    measured from the first voiced window."""
    least = 0.5 if max_drift_s > 0.0025 or stalls else 0.9
    # Where its first second is; where it may slide (a stall of the machine can fall inside that
    # second: a tail's first second, split 0.25 s in by a 41-ms stall, matched one offset at 0.44),
    # else where the second after that half or whole second is, less that much.
    for lo in (0, RATE // 2, RATE) if least < 0.9 else (0,):
        found, score = align(reference[lo : lo + RATE], recording, RATE)
        offset = found - lo
        if score >= least:
            break
    assert score >= least, f"correlation {score:.4f}: the narration's start is not in the recording"
    onset: int | None = None
    ref = _lowpass(reference.astype(np.float64), RATE, 4000.0)
    rec = _lowpass(recording.astype(np.float64) / 32768.0, RATE, 4000.0)
    window, base = RATE // 10, int(max_drift_s * RATE)
    drift = voiced = missed = missed_in_a_row = 0
    # What each stall may still move the recording by (samples), and how much of the slide so far
    # was taken at stalls: the rest must stay within ``max_drift_s`` as without stalls.
    budget = [int((last - first) * RATE) for first, last in stalls]
    at_stalls = 0
    for start in range(0, len(ref) - window, window):
        ref_w = ref[start : start + window]
        if np.sqrt(np.mean(ref_w**2)) < 0.02:
            continue  # a pause in the speech itself
        voiced += 1
        here = offset + start + drift  # where this window is expected in the recording
        # Stalls this window (100 ms either side) may have followed: their slide lands here.
        near = [i for i, (first, last) in enumerate(stalls) if first * RATE - window <= here <= last * RATE + window]
        search = base + abs(at_stalls) + sum(budget[i] for i in near) + RATE // 1000
        lo = max(0, here - search)
        seg = rec[lo : here + window + search]
        assert len(seg) >= window, f"the recording ends before the window at {start / RATE:.1f} s"
        energy = np.sqrt(np.convolve(seg**2, np.ones(window), mode="valid") * float(np.dot(ref_w, ref_w)))
        scores = np.correlate(seg, ref_w, mode="valid") / np.maximum(energy, 1e-12)
        k = int(np.argmax(scores))
        if scores[k] >= 0.75:
            missed_in_a_row = 0
            if onset is None:
                # Where the reference's start is, by its first voiced window: the slide is measured
                # from there (the anchor's second only finds it; NetEq may have stretched inside it).
                onset = offset = lo + k - start
                continue
            found = lo + k - (offset + start)
            change = found - drift
            for i in near:  # a change next to a stall is the stall's, up to its length
                took = max(-budget[i], min(budget[i], change))
                budget[i] -= abs(took)
                at_stalls, change = at_stalls + took, change - took
            drift = found
            moved = f"the recording slid {(drift - at_stalls) / RATE * 1000:.0f} ms by {start / RATE:.1f} s"
            assert abs(drift - at_stalls) <= base, moved + (
                f" (and {at_stalls / RATE * 1000:.0f} ms at stalls)" if stalls else ""
            )
        else:
            missed, missed_in_a_row = missed + 1, missed_in_a_row + 1
            assert missed_in_a_row <= 1, f"the speech at {start / RATE:.1f} s is not in the recording"
    assert voiced > 10 and missed <= voiced // 10, f"{missed} of {voiced} windows not in the recording"
    assert onset is not None
    return onset, drift / RATE


def device_heard(
    result: dict[str, Any],
    audio: dict[str, np.ndarray],
    reference: np.ndarray,
    t_from: float,
    t_to: float | None = None,
) -> None:
    """The device recording between two wall times holds ``reference`` whole and unslipped; where
    PulseAudio saw the machine stall skald's device stream there (``machine_stalls``: the pulse
    plug-in's thread in the audio consumer was not run in time; skald's own callback counts no
    underrun), it may slide by as long, window by window, and nothing more."""
    recording, t0 = clip(result, audio, "device", t_from, t_to)
    stalls = stalls_in(result, t0, t_to, DEVICE_STREAM)
    try:
        check_device_plays(reference, recording)
    except AssertionError:
        if not stalls:
            raise
        print(f"device: the machine stalled the device's stream at {_stalls_text(stalls)} (PulseAudio's underruns)")
        check_browser_hears_stretched(reference, recording, max_drift_s=0.002, stalls=stalls)


def check_device_plays(reference: np.ndarray, recording: np.ndarray) -> int:
    offset, score = align(reference, recording, RATE)
    assert score >= 0.98, f"device correlation {score:.4f}"
    worst = min(_window_scores(reference, recording, offset, RATE), key=lambda item: item[1])
    assert worst[1] >= 0.95, f"the device recording departs from the reference at {worst[0]:.2f} s ({worst[1]:.3f})"
    return offset


@pytest.mark.device
def test_chromium_hears_the_narration_whole_and_stop_silences_it(tmp_path: Path) -> None:
    result, audio = run_scenario("listen", tmp_path)
    series = result["stats"]["b1"]
    # getStats from 100 ms after the first packet to the end: no packet lost. Nothing concealed from
    # the moment Chromium's jitter buffer settled (the scenario's wait, ~1 s after the first packet)
    # through both narrations and the Stop: NetEq conceals 480-1,200 samples while it starts, 0.1-0.3
    # s after the first packet, in about half the runs on a quiet machine (8 runs, whether the
    # listener's first pull took the newest 1, 3 or 5 queued frames), before any narration.
    grown = stats_after(series, first_packet_t(series) + 0.1)
    assert grown["packetsLost_total"] == 0, grown
    assert grown["packetsReceived"] > 500
    settled = result["marks"]["b1_settled"]
    playing = stats_after(series, settled)
    clicks = {k: result[k]["t_click"] for k in ("narration", "stop")}
    when = concealments(series, settled, result["marks"] | clicks)
    assert playing["concealedSamples"] == 0 or unexplained_concealment(result, "b1", settled) == 0, (
        f"concealed (s after settling, samples or mark): {when}"
    )
    # The page's narration, heard by Chromium through PulseAudio, is the reference, whole.
    ref = audio["ref_narration"]
    span = (result["narration"]["t_click"], result["stop"]["t_click"])
    rec_b1, t0_b1 = clip(result, audio, "b1", *span)
    # Chromium's jitter buffer grows by time-stretching (NetEq "preemptive expand") when packets
    # arrive with more jitter than it planned for; on a 2-vCPU machine that also runs the
    # synthesis it did so in about half the runs (measured: 407-910 samples at 48 kHz, 8-19 ms,
    # 2-3 s into the narration, with no packet lost or concealed), which slides the rest of the
    # recording against the reference by exactly that much (670 samples reported, 13.9 ms slide).
    # So the recording is followed window by window and may slide by what Chromium reports
    # stretching from the device's playback start (stretch in the silence before moves nothing)
    # + 2 ms: a gap or lost speech of skald's own moves it further. Time-stretch per minute is a
    # target of `scripts/bench webrtc` (issue 13).
    narration = stats_after(series, result["narration"].get("playback_started", span[0]), span[1])
    stretched = narration["inserted"] + narration["removed"]
    stalls = stalls_in(result, t0_b1, span[1], BROWSER_STREAM)  # a stall of the machine slides it by as long
    offset, slide = check_browser_hears_stretched(ref, rec_b1, stretch_allowance_s(narration), stalls)
    heard = f"Chromium stretched {stretched} samples (48 kHz), the machine stalled at {_stalls_text(stalls)}"
    heard += f", slide {1000 * slide:.1f} ms"
    rec_dev, t0_dev = clip(result, audio, "device", *span)
    device_offset, _ = align(ref, rec_dev, RATE)  # where the device played it (for the figure)
    onset_browser = t0_b1 + offset / RATE
    onset_device = t0_dev + device_offset / RATE
    print(f"browser - device onset {1000 * (onset_browser - onset_device):.0f} ms, {heard}")
    # Stop: the recording is silent within 150 ms of the click, and stays silent.
    stop = result["stop"]
    assert stop["status"] == "cancelled"
    rec = audio["rec_b1"].astype(np.int32)
    click = int((stop["t_stop"] - result["rec_t0"]["b1"]) * RATE)
    assert 0 < click < len(rec) - RATE
    before = rec[click - int(0.5 * RATE) : click]
    assert np.sqrt(np.mean(before.astype(np.float64) ** 2)) > 300, "the narration was not playing at the click"
    loud = np.flatnonzero(np.abs(rec[click:]) > 200)
    silent_after_ms = 1000.0 * (loud[-1] + 1) / RATE if loud.size else 0.0
    print(f"Stop click -> browser silence {silent_after_ms:.0f} ms")
    assert silent_after_ms <= 150.0, f"the browser still played {silent_after_ms:.0f} ms after the Stop click"


def heard_whole(
    result: dict[str, Any],
    audio: dict[str, np.ndarray],
    name: str,
    reference: np.ndarray,
    t_from: float,
    t_to: float | None = None,
    min_windows: int = 30,
) -> float:
    """Wall time where ``reference`` starts in ``name``'s recording between two wall times, which
    must hold it whole: window by window at one offset, or, where getStats shows that Chromium
    time-stretched in that span (its jitter buffer adapting), following the slide it reports
    (+2 ms, as in the one-listener test: a gap or lost speech of skald's moves it further)."""
    rec, t0 = clip(result, audio, name, t_from, t_to)
    span = stats_after(result["stats"][name], t_from, float("inf") if t_to is None else t_to)
    # A stall of the machine that starved the browsers' output slides the recording by as long.
    stalls = stalls_in(result, t0, t_to, BROWSER_STREAM)
    if span["inserted"] + span["removed"]:
        offset, _ = check_browser_hears_stretched(reference, rec, stretch_allowance_s(span), stalls)
    else:
        try:
            offset, _ = check_browser_plays(reference, rec, min_windows)
        except AssertionError:
            if not stalls:
                raise
            print(f"{name}: the machine stalled the browsers' output at {_stalls_text(stalls)} (PulseAudio)")
            offset, _ = check_browser_hears_stretched(reference, rec, 0.002, stalls)
    return t0 + offset / RATE


@pytest.mark.device
def test_three_listeners_in_step_a_mid_join_and_a_killed_one(tmp_path: Path) -> None:
    result, audio = run_scenario("crowd", tmp_path)
    ref = audio["ref_narration"]
    first, second = (result["narration"]["t_click"], result["long"]["t_click"]), (result["long"]["t_click"], None)
    onsets = {name: heard_whole(result, audio, name, ref, *first) for name in ("b1", "b2", "b3")}
    # What a listener hears when is where its packets arrived plus what its NetEq holds, and each
    # browser's NetEq rests where it will in a band around its target: on a quiet Intel VM the
    # three ears agreed within 6-15 ms; on the AMD VM of 2026-12-01 they were 6-76 ms apart over
    # 14 runs (9 above 30 ms), before and after that day's changes, with their jitter buffers as far
    # apart (one run: 51.4 ms between ears, NetEq holding 70 / 85 / 117 ms, arrival 9.1 ms). The
    # packets are the same ones, sent in one fan-out: what the web actor delivers in step is
    # asserted (onset less NetEq's mean hold over the second before it); the ears are printed.
    arrived = {name: onsets[name] - hold_s(result, name, onsets[name]) for name in onsets}
    spread_ms = 1000.0 * (max(onsets.values()) - min(onsets.values()))
    delivery_ms = 1000.0 * (max(arrived.values()) - min(arrived.values()))
    holds = {name: round(1000 * (onsets[name] - arrived[name])) for name in onsets}
    print(f"onset spread of three listeners {spread_ms:.1f} ms (NetEq holds {holds} ms); arrival {delivery_ms:.1f} ms")
    assert delivery_ms <= 30.0, (onsets, holds)
    # The mid-join: b4 connected during the long narration and hears its rest from the live point:
    # the audio after it connected sits in its recording where it sits in b1's (same moment).
    # From when its jitter buffer settled: in its first ~second Chromium time-stretches what it
    # plays while NetEq finds its delay (it starts near 80 ms).
    long_ref = audio["ref_long"]
    b1_onset = heard_whole(result, audio, "b1", long_ref, *second)
    joined = result["marks"]["b4_settled"]
    cut = int((joined - b1_onset + 0.5) * RATE)
    assert 0 < cut < len(long_ref) - 2 * RATE, "b4 joined after the narration"
    tail = long_ref[cut:]
    b4_tail_at = heard_whole(result, audio, "b4", tail, *second, min_windows=10)
    # Against where b1 plays that same tail, not b1's onset + the cut: b1's jitter buffer may have
    # shrunk (accelerated) in between, after a stall that grew it before b4 joined (2026-12-01).
    b1_tail_at = heard_whole(result, audio, "b1", tail, *second, min_windows=10)
    lag_ms = 1000.0 * (b4_tail_at - b1_tail_at)
    held = {name: hold_s(result, name, at) for name, at in (("b1", b1_tail_at), ("b4", b4_tail_at))}
    sent_lag_ms = lag_ms - 1000.0 * (held["b4"] - held["b1"])
    print(f"mid-join listener vs b1 {lag_ms:.1f} ms; arrival {sent_lag_ms:.1f} ms")
    assert abs(sent_lag_ms) <= 30.0, f"the joining listener is not at the live point ({lag_ms:.1f} ms at the ear)"
    # Killing b2's browser changed nothing for b1, b3, b4: their stats stay clean throughout (no
    # packet lost; nothing concealed from when each one's jitter buffer settled, as in the
    # one-listener test: NetEq's own start-up concealment comes before that).
    for name in ("b1", "b3", "b4"):
        series = result["stats"][name]
        grown = stats_after(series, first_packet_t(series) + 0.1)
        since = result["marks"][f"{name}_settled"]
        settled = stats_after(series, since)
        when = concealments(series, since, result["marks"])
        unexplained = unexplained_concealment(result, name, since) if settled["concealedSamples"] else 0
        assert grown["packetsLost_total"] == 0 and unexplained == 0, (name, grown, settled, when)
    heard_whole(result, audio, "b3", long_ref, *second)
    device_heard(result, audio, long_ref, *second)
    assert result["long"]["underruns"] == 0, result["long"]


@pytest.mark.device
def test_a_stalled_web_actor_never_reaches_the_device_and_listeners_resume(tmp_path: Path) -> None:
    result, audio = run_scenario("stall", tmp_path)
    long = result["long"]
    ref = audio["ref_long"]
    marks = result["marks"]
    # No gap on the device from 0.5 s before the SIGSTOP to the end of the narration: the reference
    # from there on is in the device recording whole and unslipped.
    onset, _ = align(ref[: 2 * RATE], audio["rec_device"], RATE)
    device_onset = result["rec_t0"]["device"] + onset / RATE
    cut = int((marks["sigstop"] - 0.5 - device_onset) * RATE)
    assert 0 < cut < len(ref) - 5 * RATE, "the SIGSTOP did not fall inside the narration"
    device_heard(result, audio, ref[cut:], marks["sigstop"] - 1.5)
    assert long["status"] == "done" and long["underruns"] == 0, long
    # After SIGCONT the browser hears the stage again, from its live point: the speech envelope the
    # device played in the 3 s after SIGCONT + 1 s is in the browser's recording less than 0.6 s
    # later (a browser served the two stalled seconds would be 2 s behind). Envelopes, not
    # samples: Chromium's jitter buffer time-stretches for a while after a 2 s hole.
    t_from = marks["sigcont"] + 1.0
    dev, _ = clip(result, audio, "device", t_from, t_from + 3.0)
    rec, _ = clip(result, audio, "b1", t_from, t_from + 4.5)
    hop = RATE // 100  # 10 ms

    def envelope(x: np.ndarray) -> np.ndarray:
        frames = x[: len(x) // hop * hop].astype(np.float64).reshape(-1, hop)
        return np.sqrt(np.mean(frames**2, axis=1))

    e_dev, e_rec = envelope(dev), envelope(rec)
    assert e_dev.max() > 1000, "the device played no speech after SIGCONT (the narration ended too soon)"
    lags = range(len(e_rec) - len(e_dev) + 1)
    scores = [float(np.corrcoef(e_dev, e_rec[k : k + len(e_dev)])[0, 1]) for k in lags]
    best = int(np.argmax(scores))
    print(f"after SIGCONT the browser follows the device by {10 * best} ms (envelope r {scores[best]:.2f})")
    assert scores[best] > 0.45 and 10 * best < 600, (best, scores[best])  # unrelated speech: r < 0.3
    series = result["stats"]["b1"]
    after = stats_after(series, t_from)
    assert after["packetsReceived"] > 100 and after["packetsLost_total"] == 0, after
    assert after["concealedSamples"] == 0 or unexplained_concealment(result, "b1", t_from) == 0, after
    # PortAudio's own count (the rig's callback was late): last, as in the device tests.
    assert long["device_underflows"] == 0, long


@pytest.mark.device
def test_packet_loss_is_concealed_then_clean_again_and_the_device_never_notices(tmp_path: Path) -> None:
    result, audio = run_scenario("loss", tmp_path)
    marks = result["marks"]
    for name in ("b1", "b2"):
        series = result["stats"][name]
        during = stats_after(series, marks["loss_on"], marks["loss_off"] + 0.5)
        assert during["packetsLost"] > 0, f"{name}: the nftables rule dropped nothing"
        clean = stats_after(series, marks["clean_start"], marks["clean_end"])
        assert clean["packetsLost"] == 0, (name, clean)
        assert clean["concealedSamples"] == 0 or not unexplained_concealment(
            result, name, marks["clean_start"], marks["clean_end"]
        ), (name, clean)
        # After a loss Chromium may time-stretch for seconds as its jitter buffer settles: the
        # narration must be whole, sliding by no more than it reports (+2 ms).
        after = stats_after(series, marks["clean_start"])
        _, slide = check_browser_hears_stretched(
            audio["ref_narration"],
            clip(result, audio, name, marks["clean_start"])[0],
            max_drift_s=max(0.15, stretch_allowance_s(after)),
        )
        print(f"{name}: clean narration after the loss, slide {1000 * slide:.0f} ms, {clean}")
    device_heard(result, audio, audio["ref_long"], 0.0, marks["clean_start"])
    device_heard(result, audio, audio["ref_narration"], marks["clean_start"])
