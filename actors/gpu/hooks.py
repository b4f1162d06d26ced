"""What the TTS worker asks of GPU control, and the one implementation that answers on a GPU.

``GpuHooks`` is the worker's side of the contract and does nothing (the CPU tier, Piper, XTTS on
the CPU). ``GpuControlHooks`` answers it with ``actors.gpu.control``: the VRAM limit, pressure,
the one OOM path (``VramManager.recover_from_oom``) and the utilization controller's pause and
parallelism. ``scripts/bench gpu`` drives this same class, so the benchmark measures the
worker's GPU control and not a copy of it.
"""

from __future__ import annotations

from typing import Any

from actors.gpu.control import OomRecovery, UtilizationController, VramManager, control_status
from actors.gpu.tiers import ResolvedGpuConfig

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

    def after_cancel(self) -> None:
        self.vram.release("cancel")

    def after_request(self) -> None:
        self.vram.release("request_done")

    def status(self) -> dict[str, Any]:
        return control_status(self.resolved, self.vram, self.util)

    def close(self) -> None:
        self.vram.close()
        self.util.close()
