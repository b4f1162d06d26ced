"""GPU control inside the TTS worker: the VRAM limit, memory pressure, OOM recovery and the
utilization band. Everything here is harmless on a machine without a GPU: each class then says
why it is inactive and its decisions are the tier's plain values.

The worker reaches this module only through ``GpuControlHooks`` (``actors.gpu.hooks``), and so
does ``scripts/bench gpu``::

    before a dispatch   pressure = vram.check()      # peak VRAM since the last check vs the limit
                        decision = util.decide(ring_fill_s, streams_cap=pressure.max_streams)
                        wait decision.yield_s; run at most decision.parallel_streams chunks, with
                        the chunker's targets scaled by vram.chunk_bias
    a chunk fails       vram.recover_from_oom(exc)   # CUDA OOM: free, deepest pressure level;
                                                     # the worker retries once, then Piper speaks
    cancel, request end vram.release(trigger)        # empty_cache: the language model may use it

``VramManager.recover_from_oom`` is the one OOM path: nothing else frees memory or changes the
pressure level after an out-of-memory error.

Two deterministic state machines carry the logic, so it is tested without a GPU:

* ``PressureGovernor`` (VRAM): enter pressure when a chunk's peak allocation reaches 90 % of the
  limit, step one level deeper on every further check above it, and step back one level only
  after ``recover_checks`` checks in a row at or below 75 %. Each level takes one parallel
  stream away (never below one) and multiplies the chunk-size bias by 0.8 (never below 0.5).
  An OOM jumps straight to the deepest level.
* ``UtilizationPolicy`` (compute): holds the smoothed NVML utilization inside the tier's band.
  Too high: first fewer parallel streams, then a longer pause between chunks; too low: first a
  shorter pause, then more streams. The buffer wins every conflict: below the ring's low-water
  mark there is no pause and every allowed stream runs, and a pause never lasts longer than the
  audio above low water (the ring drains one second per second while the GPU rests).

The GPU itself is read through the protocols of ``actors.gpu.sensors`` (NVML samples,
``torch.cuda``'s memory counters); tests without a GPU stand in there, with the doubles of
``tests/support/gpu_doubles.py``.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.gpu.sensors import CudaMemory, GpuSampler, NvmlSampler, TorchCudaMemory
from actors.gpu.tiers import ResolvedGpuConfig, Tier, TierConfig

__all__ = [
    "OomRecovery",
    "PressureGovernor",
    "PressureState",
    "UtilDecision",
    "UtilizationController",
    "UtilizationPolicy",
    "VramManager",
    "VramUsage",
    "control_status",
    "is_oom_error",
]

log = logging.getLogger("skald.gpu")

PRESSURE_ENTER = 0.90  # share of the limit a chunk's peak allocation may reach before we act
PRESSURE_LEAVE = 0.75  # ...and must stay under, check after check, before we give back
PRESSURE_RECOVER_CHECKS = 3
PRESSURE_MAX_LEVEL = 3
PRESSURE_BIAS_STEP = 0.8
PRESSURE_BIAS_FLOOR = 0.5


# ============================================================================ VRAM


@dataclass(frozen=True)
class PressureState:
    """Where the pressure governor stands after a check.

    ``event`` is "" (no change), "enter" (into pressure), "deeper", "step_up" (one level back),
    "leave" (back to the tier's values) or "oom"."""

    level: int
    max_streams: int
    chunk_bias: float
    ratio: float
    event: str = ""

    @property
    def under_pressure(self) -> bool:
        return self.level > 0


class PressureGovernor:
    """VRAM pressure with hysteresis; a pure state machine over (peak used, limit) readings."""

    def __init__(
        self,
        base_streams: int,
        base_bias: float,
        *,
        enter: float = PRESSURE_ENTER,
        leave: float = PRESSURE_LEAVE,
        recover_checks: int = PRESSURE_RECOVER_CHECKS,
        max_level: int = PRESSURE_MAX_LEVEL,
    ) -> None:
        if not 0 < leave < enter:
            raise ValueError(f"pressure thresholds need 0 < leave < enter (got leave={leave}, enter={enter})")
        self.base_streams = max(1, base_streams)
        self.base_bias = base_bias
        self.enter, self.leave = enter, leave
        self.recover_checks = recover_checks
        self.max_level = max_level
        self.level = 0
        self._calm = 0
        self.ratio = 0.0

    def state(self, event: str = "") -> PressureState:
        streams = max(1, self.base_streams - self.level)
        bias = max(PRESSURE_BIAS_FLOOR, self.base_bias * PRESSURE_BIAS_STEP**self.level)
        return PressureState(self.level, streams, round(bias, 4), self.ratio, event)

    def update(self, used_mb: float, limit_mb: float) -> PressureState:
        self.ratio = used_mb / limit_mb if limit_mb > 0 else 0.0
        if self.ratio >= self.enter:
            self._calm = 0
            if self.level < self.max_level:
                self.level += 1
                return self.state("enter" if self.level == 1 else "deeper")
            return self.state()
        if self.ratio <= self.leave and self.level > 0:
            self._calm += 1
            if self._calm >= self.recover_checks:
                self._calm = 0
                self.level -= 1
                return self.state("leave" if self.level == 0 else "step_up")
            return self.state()
        self._calm = 0  # between the thresholds: hold, and the calm streak starts over
        return self.state()

    def note_oom(self) -> PressureState:
        self._calm = 0
        self.level = self.max_level
        return self.state("oom")


def is_oom_error(exc: BaseException) -> bool:
    """A CUDA out-of-memory: ``torch.OutOfMemoryError``, or the allocation failures cuBLAS/cuDNN
    report as plain RuntimeErrors."""
    torch = sys.modules.get("torch")  # no torch imported: no torch OOM can exist
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text or "CUDNN_STATUS_ALLOC_FAILED" in text
    )


def _drop_tracebacks(exc: BaseException) -> None:
    """Cut ``exc`` and the exceptions chained to it from their tracebacks: the frames of a failed
    CUDA call hold its tensors, and nothing can free those blocks while a traceback keeps them."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


@dataclass(frozen=True)
class OomRecovery:
    """What ``VramManager.recover_from_oom`` did, and so what the caller should do next: run at
    most ``max_streams`` chunks at once with the chunker's targets scaled by ``chunk_bias``, and
    retry the failed chunk or hand it to the fallback engine (that policy is the caller's; the
    worker retries once). ``error`` is the OOM's first line, ``oom_count`` the total so far."""

    error: str
    oom_count: int
    level: int
    max_streams: int
    chunk_bias: float


@dataclass(frozen=True)
class VramUsage:
    allocated_mb: float
    reserved_mb: float
    peak_allocated_mb: float
    peak_reserved_mb: float
    process_used_mb: float | None
    limit_mb: float
    total_mb: float


class VramManager:
    """The TTS worker's VRAM: the limit, cache clearing, pressure and OOM recovery.

    Build it with ``VramManager.for_worker(resolved)``. On the CPU tier, or when torch cannot
    reach CUDA, it is inactive: ``reason`` says why, ``check()`` returns the tier's values and
    ``release`` does nothing."""

    def __init__(
        self,
        config: TierConfig,
        memory: CudaMemory | None,
        *,
        inactive_reason: str = "",
        sampler: GpuSampler | None = None,
        enter: float = PRESSURE_ENTER,
        leave: float = PRESSURE_LEAVE,
        recover_checks: int = PRESSURE_RECOVER_CHECKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.memory = memory
        self.reason = inactive_reason if memory is None else ""
        if memory is None and not self.reason:
            self.reason = "no CUDA memory to manage"
        self.sampler = sampler
        self.limit_mb = float(config.vram_limit_mb)
        self.governor = PressureGovernor(
            config.concurrency, config.chunk_bias, enter=enter, leave=leave, recover_checks=recover_checks
        )
        self.pressure = self.governor.state()
        self.events: list[dict[str, Any]] = []  # pressure and OOM events, for status and the bench
        self.cache_clears: dict[str, int] = {}
        self.oom_count = 0
        self.run_peak_allocated_mb = 0.0
        self.run_peak_reserved_mb = 0.0
        self._clock = clock
        self._lock = threading.Lock()  # check/release may come from the IO thread (cancel) and the loop

    @classmethod
    def for_worker(cls, resolved: ResolvedGpuConfig, device: int = 0) -> VramManager:
        """Active on a GPU tier when torch reaches CUDA; inactive, with the reason, otherwise."""
        if not resolved.on_gpu:
            return cls(resolved.config, None, inactive_reason=f"CPU tier: {resolved.fallback_reason}")
        try:
            memory: CudaMemory = TorchCudaMemory(device)
        except (ImportError, RuntimeError) as exc:
            return cls(resolved.config, None, inactive_reason=f"torch.cuda unusable: {exc}")
        return cls(resolved.config, memory, sampler=_nvml_sampler(resolved))

    @property
    def active(self) -> bool:
        return self.memory is not None

    @property
    def max_streams(self) -> int:
        return self.pressure.max_streams

    @property
    def chunk_bias(self) -> float:
        return self.pressure.chunk_bias

    def apply_limit(self, limit_mb: float | None = None) -> float | None:
        """Cap this process's caching allocator at ``limit_mb`` (default: the tier's), via
        ``torch.cuda.set_per_process_memory_fraction``. Returns the fraction set, None if inactive.
        The CUDA context and cuBLAS workspaces are outside that allocator: budget ~0.5 GB more."""
        if limit_mb is not None:
            self.limit_mb = float(limit_mb)
        if self.memory is None:
            return None
        total = self.memory.total_mb()
        fraction = min(1.0, max(self.limit_mb / total, 1e-4)) if total > 0 else 1.0
        self.memory.set_limit_fraction(fraction)
        log.info("VRAM limit %.0f MiB (%.3f of %.0f MiB)", self.limit_mb, fraction, total)
        return fraction

    def usage(self) -> VramUsage | None:
        if self.memory is None:
            return None
        sample = self.sampler.sample() if self.sampler is not None else None
        return VramUsage(
            allocated_mb=self.memory.allocated_mb(),
            reserved_mb=self.memory.reserved_mb(),
            peak_allocated_mb=self.memory.peak_allocated_mb(),
            peak_reserved_mb=self.memory.peak_reserved_mb(),
            process_used_mb=sample.process_used_mb if sample else None,
            limit_mb=self.limit_mb,
            total_mb=self.memory.total_mb(),
        )

    def check(self) -> PressureState:
        """Call after each chunk: compares the peak allocation since the last check with the limit
        (the allocator frees its cache before it fails, so allocated, not reserved, is what runs
        out), updates the pressure level and clears the cache when entering or deepening it."""
        if self.memory is None:
            return self.pressure
        with self._lock:
            peak = self.memory.peak_allocated_mb()
            self.run_peak_allocated_mb = max(self.run_peak_allocated_mb, peak)
            self.run_peak_reserved_mb = max(self.run_peak_reserved_mb, self.memory.peak_reserved_mb())
            self.memory.reset_peak()
            self.pressure = self.governor.update(peak, self.limit_mb)
        if self.pressure.event:
            self._record(self.pressure, peak)
        if self.pressure.event in ("enter", "deeper"):
            self.release("pressure")
        return self.pressure

    def release(self, trigger: str) -> None:
        """Return cached blocks to the driver (``torch.cuda.empty_cache``): after a cancel, after
        a request, under pressure and after an OOM, so a neighbour (the language model) can use them."""
        if self.memory is None:
            return
        with self._lock:
            self.memory.empty_cache()
            self.cache_clears[trigger] = self.cache_clears.get(trigger, 0) + 1

    def recover_from_oom(self, exc: BaseException, *, label: str = "") -> OomRecovery | None:
        """The one OOM path (the worker's hooks and ``scripts/bench gpu`` both end here). When
        ``exc`` is a CUDA out-of-memory error: release what the failed call held, drop to the
        deepest pressure level (fewest streams, shortest chunks), clear the cache and say so in
        ``events``; returns what to do next. Any other error is not ours: None, nothing changes.

        Call it from the ``except`` block that caught ``exc``: it removes the traceback from
        ``exc`` (and its chain), because the failed call's frames hold its tensors and the cache
        clear can return their blocks only once nothing references them."""
        if not is_oom_error(exc):
            return None
        text = str(exc)
        error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        _drop_tracebacks(exc)
        gc.collect()  # tensors caught in reference cycles of the failed call
        with self._lock:
            self.oom_count += 1
            self.pressure = state = self.governor.note_oom()
            count = self.oom_count
        self._record(state, None, label=label, error=error)
        self.release("oom")
        log.warning(
            "CUDA out of memory%s: %s; now %d stream(s)", f" in {label}" if label else "", error, state.max_streams
        )
        return OomRecovery(error, count, state.level, state.max_streams, state.chunk_bias)

    def _record(self, state: PressureState, peak_mb: float | None, **extra: Any) -> None:
        self.events.append(
            {
                "t": self._clock(),
                "event": state.event,
                "level": state.level,
                "ratio": round(state.ratio, 4),
                "peak_mb": None if peak_mb is None else round(peak_mb, 1),
                "limit_mb": self.limit_mb,
                "max_streams": state.max_streams,
                "chunk_bias": state.chunk_bias,
                **extra,
            }
        )
        del self.events[:-100]  # status stays small on a long-running server

    def status(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "active": self.active,
            "reason": self.reason,
            "tier": self.config.tier.value,
            "limit_mb": self.limit_mb if self.active else 0.0,
            "pressure": {
                "level": self.pressure.level,
                "ratio": round(self.pressure.ratio, 4),
                "max_streams": self.pressure.max_streams,
                "chunk_bias": self.pressure.chunk_bias,
            },
            "oom_count": self.oom_count,
            "cache_clears": dict(self.cache_clears),
            "events": len(self.events),
        }
        usage = self.usage()
        if usage is not None:
            base.update(
                allocated_mb=round(usage.allocated_mb, 1),
                reserved_mb=round(usage.reserved_mb, 1),
                peak_allocated_mb=round(max(self.run_peak_allocated_mb, usage.peak_allocated_mb), 1),
                peak_reserved_mb=round(max(self.run_peak_reserved_mb, usage.peak_reserved_mb), 1),
                process_used_mb=None if usage.process_used_mb is None else round(usage.process_used_mb, 1),
                total_mb=round(usage.total_mb, 1),
            )
        return base

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()


# ============================================================================ utilization


@dataclass(frozen=True)
class UtilDecision:
    """What the worker does before its next chunk.

    ``action`` is one of: "inactive", "no_sample", "refill" (ring below low water: the buffer
    wins), "hold", "fewer_streams", "more_streams", "yield_more", "yield_less"."""

    yield_ms: float
    parallel_streams: int
    util_pct: float | None
    ring_fill_s: float
    action: str
    reason: str = ""

    @property
    def yield_s(self) -> float:
        return self.yield_ms / 1000.0


class UtilizationPolicy:
    """Holds smoothed GPU utilization inside ``band`` by parallelism and a pause between chunks;
    a pure function of its inputs and its state (no clock, no GPU)."""

    def __init__(
        self,
        band: tuple[float, float],
        max_streams: int,
        yield_max_ms: float,
        low_water_s: float,
        *,
        alpha: float = 0.5,
        hold_steps: int = 2,
    ) -> None:
        low, high = band
        if not 0 <= low < high <= 100:
            raise ValueError(f"utilization band {low}-{high}: need 0 <= low < high <= 100")
        self.low, self.high = low, high
        self.mid = (low + high) / 2
        self.max_streams = max(1, max_streams)
        self.yield_max_ms = yield_max_ms
        self.step_ms = max(1.0, yield_max_ms / 8)
        self.low_water_s = low_water_s
        self.alpha = alpha
        self.hold_steps = hold_steps
        self.streams = self.max_streams
        self.yield_ms = 0.0
        self.util: float | None = None
        self._cooldown = 0

    def step(
        self,
        util_pct: float | None,
        ring_fill_s: float,
        *,
        synth_s: float | None = None,
        streams_cap: int | None = None,
    ) -> UtilDecision:
        """One decision. ``util_pct``: the latest NVML reading (None: none); ``ring_fill_s``: audio
        queued for playback; ``synth_s``: how long the last chunk took (sizes the pause);
        ``streams_cap``: the VRAM pressure governor's ceiling."""
        cap = max(1, min(self.max_streams, streams_cap if streams_cap is not None else self.max_streams))
        if util_pct is not None:
            self.util = util_pct if self.util is None else self.alpha * util_pct + (1 - self.alpha) * self.util
        self.streams = min(self.streams, cap)
        if self._cooldown:
            self._cooldown -= 1
        u = self.util
        if ring_fill_s < self.low_water_s:
            self.yield_ms, self.streams, self._cooldown = 0.0, cap, 0
            action, why = "refill", f"ring {ring_fill_s:.2f} s below low water {self.low_water_s:g} s: the buffer wins"
        elif u is None:
            action, why = "no_sample", "no utilization reading yet"
        elif u > self.high:
            if self.streams > 1:
                if self._cooldown == 0:
                    self.streams -= 1
                    self._cooldown = self.hold_steps
                    action = "fewer_streams"
                else:
                    action = "hold"
            else:
                self.yield_ms = max(self.yield_ms + self.step_ms, self._proportional(u, synth_s))
                action = "yield_more"
            why = f"utilization {u:.0f} % above {self.high:g} %"
        elif u < self.low:
            if self.yield_ms > 0:
                self.yield_ms = max(0.0, min(self.yield_ms - self.step_ms, self._proportional(u, synth_s)))
                action = "yield_less"
            elif self.streams < cap and self._cooldown == 0:
                self.streams += 1
                self._cooldown = self.hold_steps
                action = "more_streams"
            else:
                action = "hold"
            why = f"utilization {u:.0f} % below {self.low:g} %"
        else:
            action, why = "hold", f"utilization {u:.0f} % inside {self.low:g}-{self.high:g} %"
        # A pause drains the ring one second per second: never let it take the ring below low water.
        headroom_ms = max(0.0, (ring_fill_s - self.low_water_s) * 1000.0)
        self.yield_ms = min(self.yield_ms, self.yield_max_ms)
        pause = min(self.yield_ms, headroom_ms)
        return UtilDecision(round(pause, 3), self.streams, u, ring_fill_s, action, why)

    def _proportional(self, util: float, synth_s: float | None) -> float:
        """The pause that would bring utilization to the band's middle if it scales with the duty
        cycle synth / (synth + pause); without a synthesis time, the additive step alone."""
        if not synth_s or synth_s <= 0:
            return 0.0 if util > self.high else self.yield_ms - self.step_ms
        synth_ms = synth_s * 1000.0
        return max(0.0, util / self.mid * (synth_ms + self.yield_ms) - synth_ms)


class UtilizationController:
    """``UtilizationPolicy`` fed by a ``GpuSampler``; inactive (no pauses, the tier's streams) on
    the CPU tier or without NVML."""

    def __init__(
        self,
        config: TierConfig,
        sampler: GpuSampler | None,
        *,
        low_water_s: float | None = None,
        inactive_reason: str = "",
    ) -> None:
        self.config = config
        self.sampler = sampler
        self.reason = "" if sampler is not None else (inactive_reason or "no utilization sampler")
        self.low_water_s = config.prebuffer_s if low_water_s is None else low_water_s
        self.policy = UtilizationPolicy(config.util_band, config.concurrency, config.yield_max_ms, self.low_water_s)
        self.last: UtilDecision | None = None
        self.samples = 0

    @classmethod
    def for_worker(cls, resolved: ResolvedGpuConfig, *, low_water_s: float | None = None) -> UtilizationController:
        if not resolved.on_gpu:
            reason = f"CPU tier: {resolved.fallback_reason}"
            return cls(resolved.config, None, low_water_s=low_water_s, inactive_reason=reason)
        sampler = _nvml_sampler(resolved)
        reason = "" if sampler is not None else "NVML unavailable: utilization unknown, no pauses"
        return cls(resolved.config, sampler, low_water_s=low_water_s, inactive_reason=reason)

    @property
    def active(self) -> bool:
        return self.sampler is not None

    def decide(
        self, ring_fill_s: float, *, synth_s: float | None = None, streams_cap: int | None = None
    ) -> UtilDecision:
        if self.sampler is None:
            cap = self.config.concurrency if streams_cap is None else max(1, min(streams_cap, self.config.concurrency))
            self.last = UtilDecision(0.0, cap, None, ring_fill_s, "inactive", self.reason)
            return self.last
        sample = self.sampler.sample()
        if sample is not None and sample.util_pct is not None:
            self.samples += 1
        util = sample.util_pct if sample is not None else None
        self.last = self.policy.step(util, ring_fill_s, synth_s=synth_s, streams_cap=streams_cap)
        return self.last

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "active": self.active,
            "reason": self.reason,
            "tier": self.config.tier.value,
            "util_pct": None if self.policy.util is None else round(self.policy.util, 1),
            "util_band": list(self.config.util_band),
            "yield_ms": last.yield_ms if last else 0.0,
            "parallel_streams": last.parallel_streams if last else self.config.concurrency,
            "action": last.action if last else "",
            "low_water_s": self.low_water_s,
            "samples": self.samples,
        }

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()


def _nvml_sampler(resolved: ResolvedGpuConfig) -> GpuSampler | None:
    primary = resolved.detection.primary
    if primary is None or primary.nvml_index < 0:
        return None
    try:
        return NvmlSampler(primary.nvml_index)
    except Exception as exc:  # ImportError or NVMLError: sampling is optional, the reason is logged
        log.warning("no NVML sampling of GPU %d: %s", primary.nvml_index, exc)
        return None


def control_status(
    resolved: ResolvedGpuConfig, vram: VramManager | None = None, util: UtilizationController | None = None
) -> dict[str, Any]:
    """The ``gpu`` block of the worker's status/metrics: tier, utilization, VRAM."""
    primary = resolved.detection.primary
    return {
        "tier": resolved.tier.value,
        "detected_tier": resolved.detected_tier.value,
        "profile": resolved.profile,
        "device": primary.name if primary and resolved.tier is not Tier.CPU else "",
        "fallback_reason": resolved.fallback_reason,
        "util": util.status() if util is not None else None,
        "vram": vram.status() if vram is not None else None,
    }
