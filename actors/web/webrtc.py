"""WebRTC listeners of the stage: the stage tee → 20 ms Opus frames → every browser, over WHEP.

::

    audio consumer ──(stage tee ring, shm)──► StageFeed thread ─────────────call_soon_threadsafe──► Listeners
      renders every block,                   read as it arrives, soxr → 48 kHz,                      one ListenerTrack
      silence too: the clock                 cut into 960-sample frames; with listeners,             per browser; aiortc
                                             each frame Opus-encoded once (OpusFrames)               packs RTP, sends

* **Paced by the stage clock.** The audio consumer publishes, with the tee, when its device plays
  tee frame 0 (``PcmRing.publish_clock``, from the DAC times of its callback). ``StageFeed`` reads
  the tee every 5 ms and sends each 20 ms frame at the moment the device plays its first sample:
  the listeners follow the DAC's clock, not the bursts in which a deep device buffer asks for
  audio, and nothing sleeps to guess a rate (no drift). All listeners get the same frame at the
  same moment (one fan-out), so they stay in step with each other and with the room's speakers.
* **Encoded once.** Every listener hears the same frames, so each frame is encoded to Opus once,
  on the feed thread, and the packet goes to every track; aiortc only packs it into RTP (a track
  that yields ``av.Packet`` skips aiortc's own encoder, which would resample and encode each
  frame again per listener, on its thread pool). An Opus decoder can start at any packet, so a
  listener joining mid-stream decodes from its first one, as behind an SFU.
* **Live point.** A listener that joins, or that fell behind (its sender was starved), plays from
  the newest frames: its queue holds at most ``MAX_QUEUED_FRAMES`` and drops the oldest; when the
  web actor itself was stalled (SIGSTOP), ``StageFeed`` skips what the tee holds beyond
  ``LIVE_WINDOW_S`` so everyone resumes at the stage's present, not two seconds behind it.
* **Sessions** (draft-ietf-wish-whep): ``POST /whep`` with an SDP offer → ``201 Created``,
  ``Location: /whep/<id>`` and the answer (ICE gathered, no trickle); ``DELETE /whep/<id>`` ends
  it; ``web.max_listeners`` bounds them (503 beyond). A session whose connection fails or closes
  is dropped at once, one that never connects or stops pulling frames after
  ``web.listener_timeout_s``: its sender is freed and the others never notice.
* **Loopback.** aioice leaves 127.0.0.1 out of its host candidates; when the gateway is bound to
  a loopback address (browsers on the same machine) it is offered too, so a browser connects with
  no STUN server and no network. ``web.ice_servers`` names STUN/TURN servers for real networks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from config.settings import Settings, is_loopback
from shm import PcmRing

log = logging.getLogger("skald.web.webrtc")

OPUS_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz: Opus's usual packet, one RTP packet per frame
#: A track holds at most this many frames (100 ms) for a sender that lags; older ones are dropped.
MAX_QUEUED_FRAMES = 5
#: After a stall of the web actor, audio older than this in the tee is skipped (back to live).
LIVE_WINDOW_S = 0.5
_POLL_S = 0.005
#: The send lead (how far the consumer renders ahead of its DAC) is the least seen over this window.
LEAD_WINDOW_S = 5.0
#: A frame sent this much after its due time counts as late (``StageFeed.late_frames``).
LATE_S = 0.02
#: Opus bit rate of the listeners' stream (mono speech: 64 kbit/s is transparent for narration;
#: aiortc's own encoder would send 128 kbit/s stereo of a mono stage).
OPUS_BITRATE = 64_000
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
#: A failing frame is logged at most this often (the counter counts every one).
ERROR_LOG_INTERVAL_S = 5.0
#: After the feed loop itself failed, it starts again (at the live point) after this pause.
RESTART_PAUSE_S = 0.1


class StageFeed:
    """The stage tee's one reader: a thread that turns what the stage plays into 20 ms frames of
    48 kHz s16 mono and hands each to ``on_frame`` (from that thread) as soon as it is complete."""

    def __init__(self, ring: PcmRing, on_frame: Callable[[bytes], None]) -> None:
        self.ring = ring
        self.on_frame = on_frame
        self.rate = ring.sample_rate
        self.frames_out = 0  # 20 ms frames handed out
        self.skipped_frames = 0  # tee frames skipped to get back to the live point
        # When the last frames went out (monotonic s): their spacing shows how smooth the stage's
        # clock reaches the listeners (bursts here become jitter in the browsers).
        self.sent_at = np.zeros(512, dtype=np.float64)
        # Frames that went out more than LATE_S after their due time, and the latest: a browser's
        # jitter buffer (~40-50 ms on a clean link) conceals what arrives later than it holds.
        self.late_frames = 0
        self.max_late_ms = 0.0
        # Frames whose hand-off raised (the listeners miss that frame, the feed goes on), and times
        # the loop itself failed and started again: one failed frame or library call must never
        # silence the listeners for good while the device plays on.
        self.frame_errors = 0
        self.restarts = 0
        self._error_logged = -ERROR_LOG_INTERVAL_S
        self._resampler: Any = None  # soxr.ResampleStream, made by each (re)start of the loop
        self._buf = np.zeros(max(1024, ring.capacity_frames), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="web-stage-feed", daemon=True)

    def start(self) -> None:
        self.ring.clear()  # what the tee held before this reader: the past, not the stage's present
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def spacing_ms(self) -> dict[str, float]:
        """p50/p99/max spacing of the last frames sent (20 ms each when the stage is smooth)."""
        n = min(self.frames_out, len(self.sent_at))
        if n < 3:
            return {}
        end = self.frames_out % len(self.sent_at)
        times = np.roll(self.sent_at, -end)[-n:]
        gaps = np.diff(times) * 1000.0
        return {
            "feed_spacing_ms_p50": round(float(np.percentile(gaps, 50)), 2),
            "feed_spacing_ms_p99": round(float(np.percentile(gaps, 99)), 2),
            "feed_spacing_ms_max": round(float(gaps.max()), 2),
        }

    def _run(self) -> None:
        """The thread: ``_feed`` until stopped. Should the loop fail (a library error, a bad read),
        it is logged, counted and started again at the live point; the stage goes on either way."""
        while not self._stop.is_set():
            try:
                self._feed()
            except Exception:
                self.restarts += 1
                log.exception("web: the stage feed failed; it starts again at the live point")
                self._stop.wait(RESTART_PAUSE_S)
                self.ring.clear()  # what the tee took meanwhile is past: restart at the present

    def _hand_off(self, frame: bytes) -> None:
        """``on_frame(frame)``; a frame that fails there is counted and logged (at most every
        ``ERROR_LOG_INTERVAL_S``), and the next one goes out as usual."""
        try:
            self.on_frame(frame)
        except Exception:
            self.frame_errors += 1
            now = time.monotonic()
            if now - self._error_logged >= ERROR_LOG_INTERVAL_S:
                self._error_logged = now
                log.exception("web: a stage frame failed (%d so far); the listeners miss it", self.frame_errors)

    def _feed(self) -> None:
        import soxr

        self._resampler = soxr.ResampleStream(self.rate, OPUS_RATE, 1, dtype="float32")
        self._pending = np.zeros(0, dtype=np.float32)
        live = int(LIVE_WINDOW_S * self.rate)
        ratio = self.rate / OPUS_RATE
        ready: collections.deque[tuple[float, bytes]] = collections.deque()  # (due, frame)
        base = self.ring.read_index  # tee frame where the resampler (re)started
        made = 0  # 48 kHz samples cut into frames since then
        # How far ahead of its DAC time the consumer renders (its device's buffer): frames go out
        # that much before their DAC time, so the browsers are not late by the device's buffer on
        # top of their own. The least lead of the last few seconds: a burst never moves it earlier.
        leads: collections.deque[tuple[float, float]] = collections.deque()
        while not self._stop.is_set():
            r = self.ring.read_index
            fill = self.ring.write_index - r
            if fill > live:
                # The web actor was stalled (SIGSTOP, starved) while the stage went on: resume at
                # the live point, with a fresh resampler (no stale audio mixed in).
                skip = fill - live // 4
                self.ring.commit_read(r + skip)
                self.skipped_frames += skip
                self._resampler = soxr.ResampleStream(self.rate, OPUS_RATE, 1, dtype="float32")
                self._pending = np.zeros(0, dtype=np.float32)
                ready.clear()
                base, made = r + skip, 0
                continue
            now = time.monotonic()
            if fill > 0:
                got = self.ring.read_into(self._buf, fill)
                self.ring.commit_read(r + got)
                out = self._resampler.resample_chunk(self._buf[:got])
                pending = np.concatenate([self._pending, out]) if len(self._pending) else out
                n = len(pending) // FRAME_SAMPLES
                epoch_s = self.ring.clock_epoch_ns() / 1e9
                lead = 0.0
                if epoch_s > 0:
                    # DAC time of the oldest frame just read, against now: how far ahead it was
                    # rendered. Its least value is a lead no frame arrives too late for (no bursts).
                    ahead = epoch_s + r / self.rate - now
                    while leads and (leads[-1][1] >= ahead or leads[0][0] < now - LEAD_WINDOW_S):
                        leads.pop() if leads[-1][1] >= ahead else leads.popleft()
                    leads.append((now, ahead))
                    lead = max(0.0, leads[0][1])
                for i in range(n):
                    block = pending[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
                    # When the device plays this frame's first sample: the frame goes out then, so
                    # the listeners follow the DAC's clock, not the bursts in which a device with a
                    # deep buffer asks for audio. No clock published (yet): it goes out at once.
                    due = epoch_s + (base + made * ratio) / self.rate - lead if epoch_s > 0 else now
                    if not now - 1.0 < due < now + 1.0:
                        due = now  # a clock that jumped (a restarted consumer): never hold a frame long
                    made += FRAME_SAMPLES
                    ready.append((due, np.clip(np.round(block * 32767.0), -32768, 32767).astype("<i2").tobytes()))
                self._pending = pending[n * FRAME_SAMPLES :].copy()
            while ready and ready[0][0] <= time.monotonic():
                sent = time.monotonic()
                late = sent - ready[0][0]
                if late > LATE_S:
                    self.late_frames += 1
                self.max_late_ms = max(self.max_late_ms, 1000.0 * late)
                self.sent_at[self.frames_out % len(self.sent_at)] = sent
                self.frames_out += 1
                self._hand_off(ready.popleft()[1])
            wait = _POLL_S if not ready else min(_POLL_S, max(0.0, ready[0][0] - time.monotonic()))
            self._stop.wait(wait)


class OpusFrames:
    """The listeners' one Opus encoder: a 20 ms frame of 48 kHz s16 mono → one Opus packet.

    Used from the ``StageFeed`` thread only (``Listeners.push_threadsafe``). libopus is
    synchronous here: one frame in, one packet out, no frame held back."""

    def __init__(self, bit_rate: int = OPUS_BITRATE) -> None:
        self.bit_rate = bit_rate
        self._codec = self._open()
        self._pts = 0
        self.packets = 0
        self.errors = 0  # frames that failed to encode (each lost to the listeners, nothing else)
        self.encode_s = 0.0  # CPU time spent encoding (thread time), for the metrics

    def _open(self) -> Any:
        import av

        codec: Any = av.CodecContext.create("libopus", "w")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = OPUS_RATE
        codec.bit_rate = self.bit_rate
        codec.time_base = _TIME_BASE
        codec.options = {"frame_duration": "20", "application": "audio"}
        codec.open()
        return codec

    def encode(self, pcm: bytes) -> bytes | None:
        """One 20 ms frame (960 s16 samples) → its Opus packet (None if libopus held it back).

        A frame that fails raises; the encoder is then opened afresh (its state may be spoilt) and
        the frame's timestamp slot stays used, so the next packets keep their place in time."""
        from av import AudioFrame

        started = time.thread_time()
        pts, self._pts = self._pts, self._pts + FRAME_SAMPLES
        try:
            frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
            frame.planes[0].update(pcm)
            frame.sample_rate = OPUS_RATE
            frame.time_base = _TIME_BASE
            frame.pts = pts
            packets = self._codec.encode(frame)
        except Exception:
            self.errors += 1
            self._codec = self._open()
            raise
        finally:
            self.encode_s += time.thread_time() - started
        if not packets:
            return None
        self.packets += 1
        return b"".join(bytes(p) for p in packets)


def _listener_track_class() -> type:
    """``ListenerTrack``, built on first use so that importing this module does not import aiortc."""
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError
    from av import Packet

    class ListenerTrack(MediaStreamTrack):
        """One listener's audio track: the stage's 20 ms Opus packets, in order, from the live
        point. It yields ``av.Packet``: aiortc packs it into RTP as it is (no encoder of its own)."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=MAX_QUEUED_FRAMES)
            self.pts = 0
            self.dropped = 0  # frames this listener missed because its sender lagged
            self.last_pull = time.monotonic()
            self.pulled = 0

        def offer(self, frame: bytes) -> None:
            if self.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1
            self.queue.put_nowait(frame)

        def end(self) -> None:
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    self.queue.get_nowait()
            self.queue.put_nowait(None)
            self.stop()

        async def recv(self) -> Any:
            self.last_pull = time.monotonic()
            if self.pulled == 0:
                # The first pull comes once DTLS is up: start from the newest frame (the live point).
                while self.queue.qsize() > 1:
                    self.queue.get_nowait()
            data = await self.queue.get()
            if data is None or self.readyState != "live":
                raise MediaStreamError
            self.pulled += 1
            self.last_pull = time.monotonic()
            packet = Packet(data)
            packet.time_base = _TIME_BASE
            packet.pts = self.pts  # continuous even across dropped frames: the browser sees no gap
            self.pts += FRAME_SAMPLES
            return packet

    return ListenerTrack


class ListenerError(Exception):
    """A WHEP request that cannot be served: ``status`` and a message naming what to change."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class Listener:
    """One WHEP session: its peer connection and track."""

    session_id: str
    pc: Any
    track: Any
    created: float = field(default_factory=time.monotonic)
    connected: bool = False


_loopback_patched = False


def offer_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 among its host candidates (it leaves loopback out)."""
    global _loopback_patched
    if _loopback_patched:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = list(original(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        if use_ipv4 and "127.0.0.1" not in found:
            found.insert(0, "127.0.0.1")
        return found

    aioice.ice.get_host_addresses = with_loopback
    _loopback_patched = True


def parse_ice_servers(value: str) -> list[dict[str, str]]:
    """``web.ice_servers``: comma-separated ``stun:HOST:PORT`` or ``turn[s]:USER:PASS@HOST:PORT`` URLs."""
    servers = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        scheme, _, rest = item.partition(":")
        if scheme not in ("stun", "turn", "turns") or not rest:
            raise ValueError(f"web.ice_servers: {item!r} is not a stun:, turn: or turns: URL")
        if "@" in rest:
            creds, _, where = rest.rpartition("@")
            user, _, password = creds.partition(":")
            servers.append({"urls": f"{scheme}:{where}", "username": user, "credential": password})
        else:
            servers.append({"urls": item})
    return servers


class Listeners:
    """Every WHEP session of the web actor, on its asyncio loop; fed by ``StageFeed``."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, loopback: bool) -> None:
        self.settings = settings
        self.loop = loop
        self.sessions: dict[str, Listener] = {}
        self.ice_servers = parse_ice_servers(settings.web.ice_servers)
        self.loopback = loopback
        self.joined = 0
        self.dropped_sessions = 0
        # Frames of ended sessions whose sender lagged: the count stays a counter when they leave.
        self.frames_dropped_ended = 0
        self.feed: StageFeed | None = None  # set by the gateway once the tee is read
        self.opus: OpusFrames | None = None  # made by the feed thread when the first listener joins
        # How long packets waited for the loop between the feed's hand-off and the fan-out (the
        # loop also serves HTTP and events): time a browser's jitter buffer must cover on top of
        # the feed's own lateness.
        self.fanout_lag_max_ms = 0.0
        self.fanout_late = 0  # packets that waited more than LATE_S
        self._watchdog: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ stage frames
    def push_threadsafe(self, frame: bytes) -> None:
        """From the ``StageFeed`` thread: one 20 ms frame, encoded once, for every listener (a
        no-op with none: nothing is encoded for nobody)."""
        if not self.sessions:
            return
        if self.opus is None:
            self.opus = OpusFrames()
        packet = self.opus.encode(frame)
        if packet is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self._fan_out, packet, time.monotonic())

    def _fan_out(self, packet: bytes, handed: float) -> None:
        lag = time.monotonic() - handed
        if lag > LATE_S:
            self.fanout_late += 1
        self.fanout_lag_max_ms = max(self.fanout_lag_max_ms, 1000.0 * lag)
        for listener in list(self.sessions.values()):
            listener.track.offer(packet)

    # ------------------------------------------------------------------ WHEP
    async def create(self, offer_sdp: str) -> tuple[str, str]:
        """An SDP offer → (session id, answer SDP). Raises ``ListenerError``."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
        from aiortc.rtcrtpsender import RTCRtpSender

        limit = self.settings.web.max_listeners
        if len(self.sessions) >= limit:
            raise ListenerError(
                503, f"{limit} listeners are connected (web.max_listeners); retry later", "too_many_listeners"
            )
        if not offer_sdp.startswith("v=0"):
            raise ListenerError(400, "the body is not an SDP offer (it must start with 'v=0')", "invalid_sdp")
        if "m=audio" not in offer_sdp:
            raise ListenerError(
                422, "the offer has no audio m-line: add a recvonly audio transceiver", "no_audio_in_offer"
            )
        if self.loopback:
            offer_loopback_candidates()
        config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in self.ice_servers])
        pc = RTCPeerConnection(config)
        track = _listener_track_class()()
        session_id = uuid.uuid4().hex[:16]
        listener = Listener(session_id, pc, track)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            pc.addTrack(track)
            opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    transceiver.setCodecPreferences(opus)
            await pc.setLocalDescription(await pc.createAnswer())
        except ListenerError:
            await pc.close()
            raise
        except Exception as exc:
            await pc.close()
            raise ListenerError(400, f"cannot answer this SDP offer: {exc}", "invalid_sdp") from None
        if "opus" not in pc.localDescription.sdp.lower():
            await pc.close()
            raise ListenerError(422, "the offer does not accept Opus at 48 kHz", "no_opus")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                listener.connected = True
            elif state in ("failed", "closed"):
                await self.delete(session_id, why=f"connection {state}")

        self.sessions[session_id] = listener
        self.joined += 1
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self.loop.create_task(self._watch())
        return session_id, pc.localDescription.sdp

    async def delete(self, session_id: str, why: str = "DELETE") -> bool:
        listener = self.sessions.pop(session_id, None)
        if listener is None:
            return False
        log.info("web: listener %s left (%s)", session_id, why)
        self.frames_dropped_ended += listener.track.dropped
        listener.track.end()
        await listener.pc.close()
        return True

    async def _watch(self) -> None:
        """Drop sessions that never connect or whose sender stopped pulling frames."""
        timeout = self.settings.web.listener_timeout_s
        while self.sessions:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for sid, listener in list(self.sessions.items()):
                idle = now - (listener.track.last_pull if listener.track.pulled else listener.created)
                if idle > timeout:
                    self.dropped_sessions += 1
                    await self.delete(sid, why=f"no frame pulled for {idle:.1f} s (web.listener_timeout_s)")

    async def close(self) -> None:
        for sid in list(self.sessions):
            await self.delete(sid, why="the web actor is stopping")
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watchdog

    def metrics(self) -> dict[str, Any]:
        return {
            "listeners": len(self.sessions),
            "listeners_joined": self.joined,
            "listeners_timed_out": self.dropped_sessions,
            "fanout_lag_ms_max": round(self.fanout_lag_max_ms, 2),
            "fanout_late": self.fanout_late,
            "listener_frames_dropped": self.frames_dropped_ended
            + sum(x.track.dropped for x in list(self.sessions.values())),
            **(
                {
                    "opus_packets": self.opus.packets,
                    "opus_encode_errors": self.opus.errors,
                    "opus_encode_cpu_s": round(self.opus.encode_s, 3),
                }
                if self.opus is not None
                else {}
            ),
            **(
                {
                    "stage_frames": self.feed.frames_out,
                    "stage_skipped_frames": self.feed.skipped_frames,
                    "stage_late_frames": self.feed.late_frames,
                    "stage_max_late_ms": round(self.feed.max_late_ms, 2),
                    "stage_frame_errors": self.feed.frame_errors,
                    "stage_feed_restarts": self.feed.restarts,
                    **self.feed.spacing_ms(),
                }
                if self.feed is not None
                else {}
            ),
        }


def is_loopback_bind(address: str) -> bool:
    """``web.http`` binds a loopback address (browsers are on this machine)."""
    return is_loopback(address.rpartition(":")[0].strip("[]"))
