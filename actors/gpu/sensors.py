"""Where GPU control reads the GPU: NVML utilization samples and ``torch.cuda``'s memory counters.

This is the missing-GPU boundary. ``VramManager`` and ``UtilizationController``
(``actors.gpu.control``) see the GPU only through the two protocols here, ``GpuSampler`` and
``CudaMemory``; production implements them with NVML (``NvmlSampler``) and torch
(``TorchCudaMemory``). Tests on a machine without a GPU implement them with the doubles in
``tests/support/gpu_doubles.py``, never with anything in this package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MIB", "CudaMemory", "GpuSample", "GpuSampler", "NvmlSampler", "TorchCudaMemory"]

log = logging.getLogger("skald.gpu")
MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuSample:
    """One NVML reading of the worker's GPU. ``util_pct`` is the share of the last sample period
    (1/6 s to 1 s, by card) during which a kernel ran, for every process on the card."""

    t: float
    util_pct: float | None
    mem_used_mb: float | None = None
    process_used_mb: float | None = None  # this process, CUDA context included; None in a PID namespace


class GpuSampler(Protocol):
    """Where utilization readings come from."""

    def sample(self) -> GpuSample | None: ...

    def close(self) -> None: ...


class NvmlSampler:
    """Reads the GPU through NVML, on demand (one call takes well under a millisecond)."""

    def __init__(self, nvml_index: int, clock: Callable[[], float] = time.monotonic) -> None:
        import pynvml

        self._nvml = pynvml
        self._clock = clock
        pynvml.nvmlInit()
        self._open = True
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        except pynvml.NVMLError:
            self.close()
            raise
        self._warned = False

    def sample(self) -> GpuSample | None:
        nvml = self._nvml
        try:
            util = float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            used = float(nvml.nvmlDeviceGetMemoryInfo(self._handle).used) / MIB
        except nvml.NVMLError as exc:
            if not self._warned:
                log.warning("NVML sample failed (%s); utilization control holds its last decision", exc)
                self._warned = True
            return None
        mine: float | None = None
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    mine = float(proc.usedGpuMemory) / MIB
        except nvml.NVMLError:
            pass
        return GpuSample(self._clock(), util, used, mine)

    def close(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()


class CudaMemory(Protocol):
    """The torch.cuda memory calls VramManager needs, in MiB, for one device."""

    def total_mb(self) -> float: ...

    def allocated_mb(self) -> float: ...

    def reserved_mb(self) -> float: ...

    def peak_allocated_mb(self) -> float: ...

    def peak_reserved_mb(self) -> float: ...

    def reset_peak(self) -> None: ...

    def empty_cache(self) -> None: ...

    def set_limit_fraction(self, fraction: float) -> None: ...


class TorchCudaMemory:
    """``torch.cuda`` memory accounting of one device (imports torch)."""

    def __init__(self, device: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda is not available")
        self._cuda = torch.cuda
        self.device = device
        self._total = float(torch.cuda.get_device_properties(device).total_memory) / MIB

    def total_mb(self) -> float:
        return self._total

    def allocated_mb(self) -> float:
        return float(self._cuda.memory_allocated(self.device)) / MIB

    def reserved_mb(self) -> float:
        return float(self._cuda.memory_reserved(self.device)) / MIB

    def peak_allocated_mb(self) -> float:
        return float(self._cuda.max_memory_allocated(self.device)) / MIB

    def peak_reserved_mb(self) -> float:
        return float(self._cuda.max_memory_reserved(self.device)) / MIB

    def reset_peak(self) -> None:
        self._cuda.reset_peak_memory_stats(self.device)

    def empty_cache(self) -> None:
        self._cuda.empty_cache()

    def set_limit_fraction(self, fraction: float) -> None:
        self._cuda.set_per_process_memory_fraction(fraction, self.device)
