"""What the TTS worker asks of GPU control, and the one implementation that answers on a GPU.

``GpuHooks`` is the worker's side of the contract and does nothing (the CPU tier, Piper, XTTS on
the CPU). ``GpuControlHooks`` answers it with ``actors.gpu.control``: the VRAM limit, pressure,
the one OOM path (``VramManager.recover_from_oom``) and the utilization controller's pause and
parallelism. ``scripts/bench gpu`` drives this same class, so the benchmark measures the
worker's GPU control and not a copy of it.
"""

from __future__ import annotations

from typing import Any

from actors.gpu.control import OomRecovery, UtilizationController, UtilizationPolicy, VramManager, control_status
from actors.gpu.tiers import ResolvedGpuConfig, resolve_gpu_config
from config.settings import Settings

__all__ = ["GpuControlHooks", "GpuHooks"]


class GpuHooks:
    """What the worker asks of GPU control (``actors.gpu.control``); no-ops on CPU."""

    def chunk_bias(self) -> float:
        return 1.0

    def streams(self, configured: int) -> int:
        return configured

    def pause_before_dispatch(self, ring_buffered_s: float) -> float:
        return 0.0

    def on_error(self, exc: BaseException) -> OomRecovery | None:
        """A chunk failed with ``exc``; call from the ``except`` block. Returns what GPU control
        did about it: an ``OomRecovery`` for a CUDA out-of-memory, None otherwise."""
        return None

    def after_cancel(self) -> None:
        pass

    def retune(self, settings: Settings) -> None:
        """Live settings changed (``gpu.profile``, the utilization band, the VRAM limit)."""

    def after_request(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}


class GpuControlHooks(GpuHooks):
    """``GpuHooks`` backed by ``actors.gpu.control``: the VRAM limit, pressure and OOM handling,
    and the utilization controller's yield and parallelism (the ring's fill wins over both).

    ``vram`` and ``util`` default to the worker's (``for_worker``: torch.cuda and NVML); tests
    on a machine without a GPU pass controllers built on the doubles of ``tests/support``."""

    def __init__(
        self,
        resolved: ResolvedGpuConfig,
        *,
        vram: VramManager | None = None,
        util: UtilizationController | None = None,
    ) -> None:
        self.resolved = resolved
        self.vram = vram if vram is not None else VramManager.for_worker(resolved)
        self.vram.apply_limit()  # before the model is loaded, so the limit covers it
        self.util = util if util is not None else UtilizationController.for_worker(resolved)
        self._streams = resolved.config.concurrency

    def streams(self, configured: int) -> int:
        return max(1, min(configured, self._streams, self.vram.max_streams))

    def chunk_bias(self) -> float:
        return self.vram.chunk_bias  # the tier's bias, lowered further under memory pressure

    def pause_before_dispatch(self, ring_buffered_s: float) -> float:
        pressure = self.vram.check()
        decision = self.util.decide(ring_buffered_s, streams_cap=pressure.max_streams)
        self._streams = decision.parallel_streams
        return decision.yield_s

    def on_error(self, exc: BaseException) -> OomRecovery | None:
        return self.vram.recover_from_oom(exc)  # a CUDA OOM: fewer streams, smaller chunks, cache freed

    def retune(self, settings: Settings) -> None:
        """Resolve the GPU knobs again against this worker's own detection, then hold the new
        utilization band and yield ceiling and cap the allocator at the new VRAM limit. The
        smoothed utilization starts over; the synthesis threads made at start stay the ceiling of
        parallelism. ``ConfigError`` (a ``ValueError``) when the knobs do not fit the tier."""
        resolved = resolve_gpu_config(settings, self.resolved.detection)
        self.resolved = resolved
        config = resolved.config
        self.util.config = config
        self.util.policy = UtilizationPolicy(
            config.util_band, config.concurrency, config.yield_max_ms, self.util.low_water_s
        )
        if config.vram_limit_mb != self.vram.limit_mb:
            self.vram.apply_limit(config.vram_limit_mb)

    def after_cancel(self) -> None:
        self.vram.release("cancel")

    def after_request(self) -> None:
        self.vram.release("request_done")

    def status(self) -> dict[str, Any]:
        return control_status(self.resolved, self.vram, self.util)

    def close(self) -> None:
        self.vram.close()
        self.util.close()
