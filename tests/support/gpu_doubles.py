"""Test doubles at the missing-GPU boundary: the protocols of ``actors.gpu.sensors``, answered
without a GPU. CPU-only CI has no NVML to read and no ``torch.cuda`` to count, and these two are
the only things that stand in for them; everything above them (``VramManager``,
``UtilizationController``, ``GpuControlHooks``, the worker, ``scripts/bench gpu``'s loop) is the
production code.

* ``RecordedGpuSampler`` plays back NVML utilization readings (``GpuSampler``).
* ``ScriptedCudaMemory`` is ``torch.cuda``'s memory counters as numbers the test moves
  (``CudaMemory``). Like torch with ``set_per_process_memory_fraction``, an allocation past the
  fraction raises torch's real ``OutOfMemoryError``; ``tensor(mb)`` is an allocation that is
  given back when the object holding it is collected, as a CUDA tensor's block is.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from actors.gpu.sensors import GpuSample

__all__ = ["RecordedGpuSampler", "ScriptedCudaMemory", "ScriptedTensor"]


class RecordedGpuSampler:
    """Plays back recorded utilization samples, one per call, then ``None`` (no reading), as a
    dead NVML would. A bare number is a utilization reading 0.25 s after the previous one."""

    def __init__(self, samples: Iterable[GpuSample | float | None]) -> None:
        self._samples: deque[GpuSample | float | None] = deque(samples)
        self._t = 0.0

    def sample(self) -> GpuSample | None:
        if not self._samples:
            return None
        item = self._samples.popleft()
        self._t += 0.25
        if item is None or isinstance(item, GpuSample):
            return item
        return GpuSample(self._t, float(item))

    def close(self) -> None:
        self._samples.clear()


class ScriptedTensor:
    """An allocation on a ``ScriptedCudaMemory`` that is freed when this object is collected."""

    def __init__(self, memory: ScriptedCudaMemory, mb: float) -> None:
        memory.allocate(mb)
        self.mb = mb
        weakref.finalize(self, memory.free, mb)


@dataclass
class ScriptedCudaMemory:
    """``torch.cuda``'s counters as plain numbers the test sets (``allocate``/``free``/``tensor``),
    recording what VramManager asked of it. Not an allocator model: only the numbers VramManager
    reads, the calls it makes, and the one failure torch gives past the fraction."""

    total: float = 24576.0
    allocated: float = 0.0
    reserved: float = 0.0
    peak_allocated: float = 0.0
    peak_reserved: float = 0.0
    fraction: float | None = None
    empty_cache_calls: int = 0
    allocated_at_clear: list[float] = field(default_factory=list)  # what was still held at each clear

    def allocate(self, mb: float) -> None:
        """Raises torch's ``OutOfMemoryError`` when a fraction is set and ``mb`` more would pass
        it (the caching allocator frees its cache before it gives up, so allocated is what counts)."""
        if self.fraction is not None and self.allocated + mb > self.fraction * self.total:
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {mb:.2f} MiB. {self.allocated:.2f} MiB is allocated "
                f"by PyTorch, and the limit is {self.fraction * self.total:.2f} MiB (scripted)"
            )
        self.allocated += mb
        self.reserved = max(self.reserved, self.allocated)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, mb: float) -> None:
        self.allocated = max(0.0, self.allocated - mb)

    def tensor(self, mb: float) -> ScriptedTensor:
        return ScriptedTensor(self, mb)

    def total_mb(self) -> float:
        return self.total

    def allocated_mb(self) -> float:
        return self.allocated

    def reserved_mb(self) -> float:
        return self.reserved

    def peak_allocated_mb(self) -> float:
        return self.peak_allocated

    def peak_reserved_mb(self) -> float:
        return self.peak_reserved

    def reset_peak(self) -> None:
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1
        self.allocated_at_clear.append(self.allocated)
        self.reserved = self.allocated

    def set_limit_fraction(self, fraction: float) -> None:
        self.fraction = fraction
