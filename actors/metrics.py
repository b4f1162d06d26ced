"""Prometheus metrics of a running server, aggregated in the supervisor from its actors' messages.

``ServerMetrics`` is a listener on the supervisor's published events (the same stream clients
see) plus a collector that reads the supervisor's ``status()`` at scrape time. Nothing here
touches an actor: every figure comes from a message the supervisor already handles, so a scrape
costs the actors nothing.

From events (counted as they pass)::

    skald_ttfa_seconds{engine}               histogram  acceptance -> first audible sample
    skald_chunk_synthesis_seconds{engine}    histogram  engine compute per chunk (no ring wait)
    skald_cancel_to_silence_seconds          histogram  cancel seen -> end of the fade at the DAC
    skald_web_listeners                      gauge      WebRTC listeners (only while the gateway runs)
    skald_requests_total{status}             counter    done | cancelled | failed
    skald_underruns_total                    counter    the sink needed audio that was not there
    skald_device_underflows_total            counter    the device ran dry (a late callback)
    skald_actor_restarts_total{actor}        counter    crashes noticed (each is restarted)
    skald_errors_total{kind}                 counter    error events by kind
    skald_backpressure_wait_seconds_total    counter    worker's wait for ring space (``wait_ms``)
    skald_audio_synthesized_seconds_total    counter    audio seconds synthesized

At scrape time (from ``status()`` and the event windows)::

    skald_rtf                                gauge      engine compute / audio, last minute
    skald_ring_fill_seconds                  gauge      audio queued in the PCM ring
    skald_requests_active                    gauge      requests not finished
    skald_actor_rss_bytes{actor}             gauge      resident memory, supervisor included
    skald_gpu_utilization_ratio              gauge      only with a GPU (the workers' NVML samples, highest)
    skald_gpu_vram_bytes                     gauge      only with a GPU (the workers' GPU memory, summed)

Latency buckets span audio latencies, 10 ms to 10 s. Served two ways: ``exposition()`` (the
``metrics`` client request, ``SkaldClient.metrics_text()``, which an HTTP gateway can serve) and
``serve(host, port)``: prometheus-client's own HTTP server on a thread of the supervisor.
``recent()`` gives ``skald top`` TTFA percentiles and underruns over the last minutes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors import wire

log = logging.getLogger("skald.metrics")

# Counters without a ``_created`` twin: the exposition stays what the names above promise.
disable_created_metrics()

#: Seconds; audio latencies from one callback block to a slow first chunk.
LATENCY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
RTF_WINDOW_S = 60.0
#: ``recent()`` (``skald top``): TTFA percentiles and underruns over this window.
RECENT_WINDOW_S = 300.0
_MAX_TRACKED = 1000  # requests remembered between two of their events (engine, cancel time)


def _rss_bytes(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss)
    except Exception:  # a scrape must never fail on one process
        return None


class _ScrapeCollector(Collector):
    """The gauges read when scraped, from the supervisor's ``status()``."""

    def __init__(self, owner: ServerMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        status = self.owner.status_snapshot()
        ring_fill = GaugeMetricFamily("skald_ring_fill_seconds", "Audio queued in the PCM ring, seconds.")
        if status is not None and "buffered_s" in status.ring:
            ring_fill.add_metric([], float(status.ring["buffered_s"]))
        yield ring_fill
        active = GaugeMetricFamily("skald_requests_active", "Requests accepted and not finished.")
        active.add_metric([], float(len(status.requests)) if status is not None else 0.0)
        yield active
        rtf = GaugeMetricFamily("skald_rtf", "Engine compute over audio synthesized in the last minute.")
        value = self.owner.rtf_last_minute()
        if value is not None:
            rtf.add_metric([], value)
        yield rtf
        rss = GaugeMetricFamily("skald_actor_rss_bytes", "Resident memory of each process.", labels=["actor"])
        own = _rss_bytes(os.getpid())
        if own is not None:
            rss.add_metric(["supervisor"], own)
        # With the HTTP gateway a second TTS worker (tts_render) reports GPU figures too; one series
        # each (an unlabelled gauge sampled twice is a duplicate series a scraper rejects): the
        # highest utilization (NVML's is the whole card's) and the memory all workers hold.
        util_pcts: list[float] = []
        held_mb: list[float] = []
        listeners: float | None = None
        for role, actor in status.actors.items() if status is not None else ():
            figures = actor.get("metrics") or {}
            if role == "web":
                count = figures.get("listeners", 0)  # 0 until the first WebRTC listener
                listeners = float(count) if isinstance(count, (int, float)) else 0.0
            rss_mb = figures.get("rss_mb")
            if isinstance(rss_mb, (int, float)) and rss_mb >= 0:
                rss.add_metric([role], float(rss_mb) * 1e6)
            gpu = figures.get("gpu")
            if isinstance(gpu, dict) and gpu:
                util_pct = (gpu.get("util") or {}).get("util_pct")
                if isinstance(util_pct, (int, float)):
                    util_pcts.append(float(util_pct))
                memory = gpu.get("vram") or {}
                held = memory.get("process_used_mb") or memory.get("reserved_mb")
                if isinstance(held, (int, float)):
                    held_mb.append(float(held))
        yield rss
        if listeners is not None:  # only while the HTTP gateway runs
            web = GaugeMetricFamily("skald_web_listeners", "WebRTC listeners of the stage (the HTTP gateway).")
            web.add_metric([], listeners)
            yield web
        if util_pcts or held_mb:  # no GPU, no GPU series
            util = GaugeMetricFamily("skald_gpu_utilization_ratio", "GPU utilization, 0-1 (NVML).")
            if util_pcts:
                util.add_metric([], max(util_pcts) / 100.0)
            yield util
            vram = GaugeMetricFamily("skald_gpu_vram_bytes", "GPU memory held by the TTS workers.")
            if held_mb:
                vram.add_metric([], sum(held_mb) * 2**20)
            yield vram


class ServerMetrics:
    """The supervisor's Prometheus registry: ``observe`` every published event, scrape any time.

    ``status`` is the supervisor's ``status()``; it is called from the HTTP server's thread too,
    so a scrape that races the main loop's bookkeeping retries instead of failing."""

    def __init__(self, status: Callable[[], wire.Status], default_engine: str = "") -> None:
        self._status = status
        self.default_engine = default_engine
        self.registry = CollectorRegistry()  # its own: two supervisors in one process never mix
        reg = self.registry
        self.ttfa = Histogram(
            "skald_ttfa_seconds",
            "Time to first audio: request accepted -> first sample audible.",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.synthesis = Histogram(
            "skald_chunk_synthesis_seconds",
            "Engine compute per chunk (the wait for ring space is not included).",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.cancel_to_silence = Histogram(
            "skald_cancel_to_silence_seconds",
            "Cancel seen by the server -> end of the fade-out at the DAC.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.requests = Counter("skald_requests", "Requests finished, by status.", ["status"], registry=reg)
        for status_name in ("done", "cancelled", "failed"):
            self.requests.labels(status_name)
        self.underruns = Counter(
            "skald_underruns", "Underruns: the sink needed audio that was not there.", registry=reg
        )
        self.device_underflows = Counter(
            "skald_device_underflows", "Device underflows: the output device itself ran dry.", registry=reg
        )
        self.restarts = Counter(
            "skald_actor_restarts", "Actor crashes noticed (each restarted).", ["actor"], registry=reg
        )
        for role in wire.Role:
            self.restarts.labels(role.value)
        self.errors = Counter("skald_errors", "Error events, by kind.", ["kind"], registry=reg)
        for kind in wire.ERROR_KINDS:
            self.errors.labels(kind)
        self.wait = Counter(
            "skald_backpressure_wait_seconds", "Time the TTS worker waited for ring space.", registry=reg
        )
        self.audio = Counter("skald_audio_synthesized_seconds", "Audio synthesized, seconds.", registry=reg)
        reg.register(_ScrapeCollector(self))
        self._lock = threading.Lock()  # the windows: appended by the main loop, read by scrapes
        self._chunks: deque[tuple[float, float, float]] = deque()  # (t, compute_s, audio_s)
        self._ttfas: deque[tuple[float, float]] = deque()  # (t, ttfa_s)
        self._underrun_times: deque[float] = deque()
        self._engine_of: dict[str, str] = {}
        self._httpd: Any = None
        self._http_thread: threading.Thread | None = None
        self.http_address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ events
    def observe(self, msg: wire.Message) -> None:
        """Supervisor listener: count one published event."""
        now = time.monotonic()
        if isinstance(msg, wire.ChunkSynthesized):
            if msg.dur_s > 0:
                engine = msg.engine or self.default_engine
                self.synthesis.labels(engine).observe(msg.synth_ms / 1000.0)
                self.audio.inc(msg.dur_s)
                self._remember(self._engine_of, msg.request_id, engine, overwrite=False)
                with self._lock:
                    self._chunks.append((now, msg.synth_ms / 1000.0, msg.dur_s))
            if msg.wait_ms > 0:
                self.wait.inc(msg.wait_ms / 1000.0)
        elif isinstance(msg, wire.PlaybackStarted):
            engine = self._engine_of.get(msg.request_id, self.default_engine)
            self.ttfa.labels(engine).observe(max(0.0, msg.ttfa_ms / 1000.0))
            with self._lock:
                self._ttfas.append((now, msg.ttfa_ms))
        elif isinstance(msg, wire.Underrun):
            self.underruns.inc()
            with self._lock:
                self._underrun_times.append(now)
        elif isinstance(msg, wire.RequestFinished):
            self.requests.labels(msg.status).inc()
            if msg.device_underflows > 0:
                self.device_underflows.inc(msg.device_underflows)
            self._engine_of.pop(msg.request_id, None)
        elif isinstance(msg, wire.Silenced):
            # The contract (docs/protocol.md) puts silenced before request_finished: the cancel is
            # timed from when the consumer applied it (its own clock, as t_silent's).
            if msg.was_audible and msg.t_cancel_seen > 0:
                self.cancel_to_silence.observe(max(0.0, msg.t_silent - msg.t_cancel_seen))
        elif isinstance(msg, wire.Error):
            self.errors.labels(msg.kind).inc()
            if msg.kind == "actor_crashed" and msg.actor:
                self.restarts.labels(msg.actor).inc()
        self._trim(now)

    @staticmethod
    def _remember(table: dict[str, Any], key: str, value: Any, overwrite: bool = True) -> None:
        if overwrite or key not in table:
            table[key] = value
        while len(table) > _MAX_TRACKED:
            table.pop(next(iter(table)))

    def _trim(self, now: float) -> None:
        with self._lock:
            for window, span in ((self._chunks, RTF_WINDOW_S), (self._ttfas, RECENT_WINDOW_S)):
                while window and now - window[0][0] > span:
                    window.popleft()
            while self._underrun_times and now - self._underrun_times[0] > RECENT_WINDOW_S:
                self._underrun_times.popleft()

    # ------------------------------------------------------------------ reading
    def status_snapshot(self) -> wire.Status | None:
        for _ in range(5):
            try:
                return self._status()
            except RuntimeError:  # a dict changed size under us (scrape thread vs main loop)
                continue
            except Exception:  # a scrape must never raise into the HTTP server
                log.exception("status for metrics failed")
                return None
        return None

    def rtf_last_minute(self) -> float | None:
        now = time.monotonic()
        with self._lock:
            recent = [(c, a) for t, c, a in self._chunks if now - t <= RTF_WINDOW_S]
        audio = sum(a for _, a in recent)
        return sum(c for c, _ in recent) / audio if audio > 0 else None

    def recent(self) -> dict[str, Any]:
        """TTFA p50/p95, underruns and RTF over the last minutes, for ``status`` (``skald top``)."""
        now = time.monotonic()
        self._trim(now)
        with self._lock:
            ttfas = [ms for _, ms in self._ttfas]
            underruns = len(self._underrun_times)
        rtf = self.rtf_last_minute()
        return {
            "window_s": RECENT_WINDOW_S,
            "playbacks": len(ttfas),
            "ttfa_ms_p50": round(_percentile(ttfas, 0.5), 1) if ttfas else None,
            "ttfa_ms_p95": round(_percentile(ttfas, 0.95), 1) if ttfas else None,
            "underruns": underruns,
            "rtf_last_minute": round(rtf, 4) if rtf is not None else None,
        }

    def exposition(self) -> str:
        """The Prometheus text format of every metric now."""
        return generate_latest(self.registry).decode("utf-8")

    # ------------------------------------------------------------------ HTTP
    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on prometheus-client's HTTP server, on a daemon thread; returns the
        address bound (port 0 picks a free one). Raises ``OSError`` when it cannot bind."""
        from prometheus_client import start_http_server

        self._httpd, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._httpd.server_address
        self.http_address = (str(bound[0]), int(bound[1]))
        return self.http_address

    def close(self) -> None:
        if self._httpd is not None:
            with contextlib.suppress(Exception):
                self._httpd.shutdown()
                self._httpd.server_close()
            if self._http_thread is not None:
                self._http_thread.join(2.0)
            self._httpd = None


def _percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
