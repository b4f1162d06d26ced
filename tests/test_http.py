"""The HTTP gateway (issue 12), tested from outside with real clients against a real ``skald serve
--http``: the official ``openai`` package for the speech API, ``http.client`` for malformed
bytes, the PulseAudio rig for "renders never starve the stage".

The server runs with Piper's noise off, so each render can be checked sample by sample against raw
Piper output of the same chunk plan (built from the events, as the WAV sink's test does).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from actors import wire
from tests.audio_rig import STEADY_DEVICE, MonitorRecorder, PulseNullSink, align
from tests.conftest import ROOT, SKALD, Server, sample_text, server_env, wait_until
from tests.event_log import EventLog
from tests.support.untraced import UNTRACED_SERVER
from tests.test_speech_output import DETERMINISTIC, _window_scores, joined_from_events

KEY = "sk-skald-test"
RATE = 22050  # the ring rate (Piper's joe-medium voice)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.events = EventLog(server.client())

    def openai(self, key: str = KEY) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60.0)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body, {"Authorization": f"Bearer {KEY}", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data[:1] == b"{" else {}
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


@pytest.fixture
def gateway(make_server: Callable[..., Server]) -> Iterator[Gateway]:
    port = free_port()
    server = make_server(
        "--sink", "null", "--http", f"127.0.0.1:{port}",
        SKALD_WEB_API_KEY=KEY, SKALD_SUPERVISOR_RESTART_BACKOFF_S="1.5", SKALD_WEB_MAX_RENDERS="2",
        **DETERMINISTIC,
    )  # fmt: skip
    gw = Gateway(server, port)
    try:
        yield gw
    finally:
        gw.events.close()


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Any response_format back to mono float samples with PyAV (pcm: OpenAI's raw s16le 24 kHz)."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0, 24000
    import av

    out: list[np.ndarray] = []
    rate = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.layout.nb_channels == 1, f"{fmt}: not mono"
        for frame in container.decode(stream):
            rate = frame.sample_rate
            out.append(frame.to_ndarray().astype(np.float64).reshape(-1))
    samples = np.concatenate(out)
    if np.abs(samples).max() > 2.0:  # integer sample formats
        samples /= 32768.0
    return samples, rate


# ---------------------------------------------------------------------------------- speech API
@pytest.mark.timeout(400)
def test_openai_client_streams_each_format_before_the_render_ends(gateway: Gateway) -> None:
    import soxr

    client = gateway.openai()
    text = sample_text("crypt.txt")
    for fmt in ("pcm", "wav", "opus", "mp3", "flac", "aac"):
        first_byte = 0.0
        data = b""
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format=fmt
        ) as response:
            request_id = response.headers["x-request-id"]
            for part in response.iter_bytes():
                if part and not first_byte:
                    first_byte = time.monotonic()
                data += part
        _, finished = gateway.events.finished(request_id)
        assert finished.status == "done", finished
        synthesized = gateway.events.of(request_id, wire.ChunkSynthesized)
        assert len(synthesized) >= 3, f"{fmt}: the text should make several chunks"
        # Streaming, asserted from skald's own events: the first bytes were here before the
        # render's last chunk had even been synthesized.
        assert first_byte < max(t for t, _ in synthesized), f"{fmt}: first byte only after the last chunk"
        samples, rate = decode(data, fmt)
        # Codec priming (mp3, aac) adds a frame or two; nothing else may differ.
        assert abs(len(samples) / rate - finished.audio_s) < 0.15, (fmt, len(samples) / rate, finished.audio_s)
        assert np.sqrt(np.mean(samples**2)) > 0.01, f"{fmt}: silence"
        if fmt in ("pcm", "wav"):
            if fmt == "wav":
                assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"
                samples, rate = decode(data[44:], "pcm")
            reference = soxr.resample(joined_from_events(gateway.events.messages(), request_id, RATE), RATE, 24000)
            pad = np.zeros(2400)
            recorded = (np.concatenate([pad, samples, pad]) * 32768.0).astype(np.int16)
            _, score = align(reference, recorded, 24000)
            assert score >= 0.999, f"{fmt}: correlation {score:.5f} with raw Piper of the same chunk plan"


def test_sse_stream_format_gives_deltas_then_one_done(gateway: Gateway) -> None:
    client = gateway.openai()
    events: list[dict[str, Any]] = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=sample_text("crypt.txt")[:200], response_format="pcm",
        extra_body={"stream_format": "sse"},
    ) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds.count("speech.audio.done") == 1 and kinds[-1] == "speech.audio.done"
    deltas = [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2
    samples, _ = decode(b"".join(deltas), "pcm")
    assert len(samples) > 24000 and np.sqrt(np.mean(samples**2)) > 0.01


def test_a_client_that_disconnects_cancels_its_render(gateway: Gateway) -> None:
    client = gateway.openai()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=sample_text("forest-long.txt"), response_format="pcm"
    ) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_bytes())
    t_left = time.monotonic()  # the context closed the connection
    t_end, finished = gateway.events.finished(request_id, timeout=10)
    assert finished.status == "cancelled", finished
    assert t_end - t_left < 0.5, f"cancelled {t_end - t_left:.3f} s after the client left"
    planned = len(gateway.events.of(request_id, wire.ChunkPlanned))
    # A probe render after it: the render worker handles messages in order, so any chunk of the
    # cancelled render still to be synthesized would be reported before the probe finishes.
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Still here.", response_format="pcm"
    ) as probe:
        probe_id = probe.headers["x-request-id"]
        assert probe.read()
    gateway.events.finished(probe_id)
    after = [t for t, _ in gateway.events.of(request_id, wire.ChunkSynthesized) if t > t_end]
    assert not after, "chunks were synthesized after the cancel"
    assert planned > len(gateway.events.of(request_id, wire.ChunkSynthesized)) + 2, "the render was not cut short"


# ---------------------------------------------------------------------------------- bad input
BAD_BODIES: list[tuple[bytes, int, str | None]] = [
    (b'{"model":"tts-1","voice":"alloy","input":""}', 422, "input"),
    (b'{"model":"tts-1","voice":"alloy","input":"   "}', 422, "input"),
    (b'{"model":"tts-1","voice":"alloy","input":"hi","speed":4.5}', 422, "speed"),
    (b'{"model":"tts-1","voice":"alloy","input":"hi","speed":0.1}', 422, "speed"),
    (b'{"model":"tts-1","voice":"alloy","input":"hi","response_format":"ogg"}', 422, "response_format"),
    (b'{"model":"tts-1","voice":"alloy","input":"hi","stream_format":"ws"}', 422, "stream_format"),
    (b'{"model":"tts-1","voice":"nobody","input":"hi"}', 404, "voice"),
    (b'{"model":"tts-9","voice":"alloy","input":"hi"}', 404, "model"),
    (b'{"model":"tts-1","input":"hi"}', 400, "voice"),
    (b'{"model":"tts-1","voice":"alloy","input":42}', 400, "input"),
    (b'{"model":"tts-1","voice":"alloy","input":"hi",', 400, None),
    (b'["not", "an", "object"]', 400, None),
    (b'{"model":"tts-1","voice":"alloy","input":"\xff\xfe"}', 400, None),
    (b'{"model":"tts-1","voice":"alloy","input":"a\\u0000b"}', 422, "input"),
]


@pytest.mark.timeout(400)
def test_bad_requests_get_openai_shaped_errors_and_harm_nothing(gateway: Gateway) -> None:
    for body, status, param in BAD_BODIES:
        got, answer = gateway.post("/v1/audio/speech", body, {"Content-Type": "application/json"})
        assert got == status, (body, got, answer)
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], answer
        assert error["param"] == param, (body, error)
    huge = b'{"model":"tts-1","voice":"alloy","input":"' + b"a" * (10 * 1024 * 1024) + b'"}'
    got, answer = gateway.post("/v1/audio/speech", huge)
    assert got == 413 and "web.max_body_bytes" in answer["error"]["message"]
    # Text over protocol.max_text_chars (but under the body limit) is the supervisor's 413.
    long_text = json.dumps({"model": "tts-1", "voice": "alloy", "input": "word " * 30000}).encode()
    got, answer = gateway.post("/v1/audio/speech", long_text)
    assert got == 413 and "max_text_chars" in answer["error"]["message"], answer
    # Keys: none, wrong.
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        got, answer = gateway.post("/v1/audio/speech", BAD_BODIES[0][0], headers)
        assert got == 401 and answer["error"]["type"] == "authentication_error"
    from openai import AuthenticationError

    with pytest.raises(AuthenticationError):
        gateway.openai(key="wrong").audio.speech.create(model="tts-1", voice="alloy", input="hi")
    # A thousand bad requests on one keep-alive connection, then a good one works.
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    for i in range(1000):
        body, status, _ = BAD_BODIES[i % len(BAD_BODIES)]
        conn.request("POST", "/v1/audio/speech", body, {"Authorization": f"Bearer {KEY}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == status
    conn.close()
    audio = gateway.openai().audio.speech.create(
        model="tts-1", voice="alloy", input="All is well.", response_format="wav"
    )
    assert audio.content[:4] == b"RIFF" and len(audio.content) > 24000
    status, health = gateway.get("/healthz")
    assert status == 200 and all(health["actors"].values())


def test_an_idle_keep_alive_connection_outlives_a_client_s_pause(gateway: Gateway) -> None:
    """A client that reuses its connection after a pause (aiohttp keeps them 15 s) must find it
    open: the server closing it first races the client's next request."""
    import socket
    import time

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert conn.getresponse().read() and conn.sock is not None
        time.sleep(6.0)  # the pause under test: longer than uvicorn's default keep-alive (5 s)
        conn.sock.setblocking(False)
        try:
            eof = conn.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            eof = False  # nothing to read and not closed: the connection is still open
        conn.sock.setblocking(True)
        assert not eof, "the server closed the idle connection"
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_more_renders_than_allowed_get_429(gateway: Gateway) -> None:
    client = gateway.openai()
    # Long enough that neither render is done (all of it sent) when the third request comes.
    text = sample_text("forest-long.txt") * 4
    readers: list[Iterator[bytes]] = []  # kept: a dropped iterator closes its response
    with contextlib.ExitStack() as stack:
        for _ in range(2):  # web.max_renders = 2 here; each held open after its first bytes
            response = stack.enter_context(
                client.audio.speech.with_streaming_response.create(
                    model="tts-1", voice="alloy", input=text, response_format="pcm"
                )
            )
            readers.append(response.iter_bytes())
            next(readers[-1])
        got, answer = gateway.post("/v1/audio/speech", b'{"model":"tts-1","voice":"alloy","input":"hi"}')
        assert got == 429 and answer["error"]["type"] == "rate_limit_error", answer
    # Closing them frees the slots.
    assert wait_until(lambda: gateway.post("/v1/audio/speech", BAD_BODIES[0][0])[0] == 422, 10)
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input="Next.", response_format="pcm")
    assert len(audio.content) > 4800


# ---------------------------------------------------------------------------------- native API
def test_native_narration_api_speaks_on_the_stage_and_streams_events(gateway: Gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    conn.request("GET", "/v1/events", headers={"Authorization": f"Bearer {KEY}"})
    sse = conn.getresponse()
    assert sse.status == 200 and sse.getheader("content-type", "").startswith("text/event-stream")
    assert sse.readline().startswith(b": skald events")  # the subscription is live
    got, answer = gateway.post("/v1/narration", json.dumps({"text": "Roll for initiative.", "voice": ""}).encode())
    assert got == 200, answer
    request_id = answer["request_id"]
    kinds: list[str] = []
    while "request_finished" not in kinds:
        line = sse.readline()
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if event.get("request_id") == request_id:
                kinds.append(event["kind"])
    conn.close()
    assert kinds[0] == "accepted" and "playback_started" in kinds, kinds
    _, finished = gateway.events.finished(request_id)
    assert finished.status == "done"
    # Cancel by id, cancel everything, and the errors.
    got, answer = gateway.post("/v1/narration", json.dumps({"text": sample_text("forest-long.txt")}).encode())
    long_id = answer["request_id"]
    got, answer = gateway.post("/v1/narration/cancel", json.dumps({"request_id": long_id}).encode())
    assert got == 200, answer
    assert gateway.events.finished(long_id)[1].status == "cancelled"
    assert gateway.post("/v1/narration/cancel", b'{"all": true}')[0] == 200
    assert gateway.post("/v1/narration/cancel", b'{"request_id": "nope"}')[0] == 404
    assert gateway.post("/v1/narration/cancel", b"{}")[0] == 400
    assert gateway.post("/v1/narration", b'{"text": ""}')[0] == 422
    assert gateway.post("/v1/narration", b'{"text": "hi", "barge_in": "shout"}')[0] == 422
    status, models = gateway.get("/v1/models")
    assert status == 200 and {m["id"] for m in models["data"]} >= {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper"}
    status, voices = gateway.get("/v1/audio/voices")
    assert status == 200 and "en_US-joe-medium" in voices["skald"] and voices["openai"]["alloy"] == "en_US-joe-medium"
    status, schema = gateway.get("/openapi.json")
    assert status == 200 and "/v1/audio/speech" in schema["paths"]
    # The supervisor's Prometheus metrics, on the gateway too, with its own listener gauge.
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    reply = conn.getresponse()
    families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    conn.close()
    assert reply.status == 200 and families["skald_web_listeners"].samples[0].value == 0
    done = [s for s in families["skald_requests"].samples if s.labels.get("status") == "done"]
    assert done and done[0].value >= 1


# ---------------------------------------------------------------------------------- supervision
def test_killed_actors_are_noticed_reported_restarted_and_503_meanwhile(gateway: Gateway) -> None:
    pids = gateway.server.actor_pids()
    # The render worker: renders get 503 until it is back (restart backoff 1.5 s here).
    os.kill(pids["tts_render"], signal.SIGKILL)
    gateway.events.wait(lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed" and e.actor == "tts_render")
    got, answer = gateway.post("/v1/audio/speech", b'{"model":"tts-1","voice":"alloy","input":"hi"}')
    assert got == 503 and "tts_render" in answer["error"]["message"], answer
    assert wait_until(lambda: gateway.get("/healthz")[0] == 200, 60)
    # The web actor itself: a new one serves on the same port.
    os.kill(pids["web"], signal.SIGKILL)
    gateway.events.wait(lambda e: isinstance(e, wire.Error) and e.kind == "actor_crashed" and e.actor == "web")

    def serving() -> bool:
        try:
            return gateway.get("/healthz")[0] == 200
        except OSError:
            return False

    assert wait_until(serving, 60)
    new = gateway.server.actor_pids()
    assert new["web"] != pids["web"] and new["tts_render"] != pids["tts_render"]
    assert new["tts_worker"] == pids["tts_worker"] and new["audio_consumer"] == pids["audio_consumer"]
    audio = gateway.openai().audio.speech.create(
        model="tts-1", voice="alloy", input="Back again.", response_format="pcm"
    )
    assert len(audio.content) > 4800


def test_a_public_bind_without_a_key_refuses_to_start() -> None:
    proc = subprocess.run(
        [*SKALD, "serve", "--sink", "null", "--http", f"0.0.0.0:{free_port()}"],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "web.api_key" in proc.stderr and "0.0.0.0" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------- the stage first
#: The device setting docs/http.md gives for a small machine that serves renders beside the stage:
#: a 250-ms device buffer. Three renders, their clients and the stage on 2 cores delay the device
#: callback by up to 175 ms (measured with SCHED_FIFO, 104 ms without), past the ~60 ms of
#: "high": the device ran dry in 5 of 5 CI tries. (Measured by stamping each callback's start.)
RENDERS_BESIDE_THE_STAGE = {**STEADY_DEVICE, "SKALD_AUDIO_LATENCY": "0.25"}


@pytest.mark.device
@pytest.mark.timeout(400)
def test_three_renders_while_the_stage_narrates_leave_it_gap_free(
    make_server: Callable[..., Server], pulse_sink: PulseNullSink
) -> None:
    port = free_port()
    server = make_server(
        "--sink", "device", "--http", f"127.0.0.1:{port}", **pulse_sink.env, **DETERMINISTIC,
        **RENDERS_BESIDE_THE_STAGE,
        **UNTRACED_SERVER,  # its real-time budget on 2 cores has no room for coverage's tracer
    )  # fmt: skip
    gw = Gateway(server, port)
    results: dict[int, bytes] = {}

    def render(i: int) -> None:
        from openai import OpenAI

        client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=120.0)
        results[i] = client.audio.speech.create(
            model="tts-1", voice="alloy", input=sample_text("forest-long.txt"), response_format="opus"
        ).content

    try:
        with server.client() as ctl, MonitorRecorder(rate=RATE, env=pulse_sink.env) as recorder:
            stage_id = ctl.speak(sample_text("forest-long.txt"))
            gw.events.wait(lambda e: isinstance(e, wire.PlaybackStarted) and e.request_id == stage_id)
            threads = [threading.Thread(target=render, args=(i,)) for i in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(240)
            _, finished = gw.events.finished(stage_id, timeout=240)
            assert recorder.wait_until_covered(time.monotonic() + 0.3), "the recorder fell behind"  # the tail pad
            recording = recorder.stop()
        assert sorted(results) == [0, 1, 2], "every render completed"
        for data in results.values():
            samples, rate = decode(data, "opus")
            assert len(samples) / rate > 30
        assert finished.status == "done" and finished.underruns == 0, finished
        assert finished.device_underflows == 0, "the device ran dry while renders ran"
        reference = joined_from_events(gw.events.messages(), stage_id, RATE)
        offset, score = align(reference, recording, RATE)
        assert score >= 0.98, f"correlation {score:.4f}"
        scores = _window_scores(reference, recording, offset, RATE)
        worst = min(scores, key=lambda item: item[1])
        assert worst[1] >= 0.95, f"the stage departs from the reference at {worst[0]:.2f} s ({worst[1]:.3f})"
    finally:
        gw.events.close()
