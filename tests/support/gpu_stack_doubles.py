"""Test doubles for the two modules ``actors.gpu.detect`` asks about a GPU: ``pynvml`` (NVML) and
``torch`` (``torch.cuda``). This machine has neither a driver nor a GPU, so the real modules only
ever answer "no driver"; these stand in for them, as modules put in ``sys.modules``, to run the
paths where a GPU answers (or answers strangely: no memory size, a MIG card, a failed query).

Only what ``detect.py`` and ``sensors.py`` call exists here, with the real modules' names and shapes (NVML's error
classes are told apart by their class names, as ``pynvml`` names them). Everything above them is
the production code. The protocols of ``actors.gpu.sensors`` have their own doubles in
``tests/support/gpu_doubles.py``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeCudaDevice", "FakeNvmlCard", "fake_pynvml", "fake_torch"]

MIB = 1024 * 1024


@dataclass
class FakeNvmlCard:
    """One GPU as NVML reports it. ``memory_error``: its memory query fails; ``mig``: True/False
    for a MIG-capable card in/out of MIG mode, None for a card that is not MIG-capable (the query
    raises, as on consumer cards)."""

    name: str
    total_mib: int
    free_mib: int
    cc: tuple[int, int]
    uuid: str
    memory_error: bool = False
    mig: bool | None = None
    # What NvmlSampler reads (actors.gpu.sensors): utilization, memory in use, the compute
    # processes as (pid, bytes or None), and whether those queries fail.
    util_pct: int = 0
    used_mib: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    sample_error: bool = False
    processes_error: bool = False


def fake_pynvml(
    cards: list[FakeNvmlCard] | None = None,
    *,
    init_error: str = "",
    query_error: str = "",
    cuda_driver_version: int | None = 12080,
    shutdown_error: bool = False,
) -> types.ModuleType:
    """A ``pynvml`` module answering for ``cards``. ``init_error``/``query_error``: the name of the
    ``NVMLError_*`` class (or ``"NVMLError"``) that ``nvmlInit``/``nvmlDeviceGetCount`` raise.
    ``calls`` on the module records the calls made, so a test sees that shutdown always ran."""
    cards = list(cards or [])
    mod = types.ModuleType("pynvml")
    calls: list[str] = []

    class NVMLError(Exception):
        pass

    vars(mod).update(calls=calls, NVMLError=NVMLError, NVML_DEVICE_MIG_ENABLE=1)
    kinds = ("LibraryNotFound", "DriverNotLoaded", "FunctionNotFound", "NoPermission", "Unknown", "NotSupported")
    for kind in (*kinds, "InvalidArgument"):
        name = f"NVMLError_{kind}"
        setattr(mod, name, type(name, (NVMLError,), {}))

    def error(name: str) -> Exception:
        return getattr(mod, name)(f"scripted {name}")

    def init() -> None:
        calls.append("init")
        if init_error:
            raise error(init_error)

    def shutdown() -> None:
        calls.append("shutdown")
        if shutdown_error:
            raise error("NVMLError_Unknown")

    def cuda_version() -> int:
        if cuda_driver_version is None:
            raise error("NVMLError_FunctionNotFound")
        return cuda_driver_version

    def count() -> int:
        if query_error:
            raise error(query_error)
        return len(cards)

    def memory(card: FakeNvmlCard) -> Any:
        if card.memory_error:
            raise error("NVMLError_NotSupported")
        return types.SimpleNamespace(total=card.total_mib * MIB, free=card.free_mib * MIB, used=card.used_mib * MIB)

    def handle(index: int) -> FakeNvmlCard:
        if not 0 <= index < len(cards):
            raise error("NVMLError_InvalidArgument")  # as NVML answers an index past the last card
        return cards[index]

    def utilization(card: FakeNvmlCard) -> Any:
        if card.sample_error:
            raise error("NVMLError_Unknown")
        return types.SimpleNamespace(gpu=card.util_pct, memory=0)

    def processes(card: FakeNvmlCard) -> list[Any]:
        if card.processes_error:
            raise error("NVMLError_NoPermission")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in card.processes]

    def mig_mode(card: FakeNvmlCard) -> tuple[int, int]:
        if card.mig is None:
            raise error("NVMLError_NotSupported")
        return (1, 1) if card.mig else (0, 0)

    vars(mod).update(
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlSystemGetDriverVersion=lambda: b"580.65.06",  # bytes, as older pynvml releases return
        nvmlSystemGetCudaDriverVersion=cuda_version,
        nvmlDeviceGetCount=count,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetComputeRunningProcesses=processes,
        nvmlDeviceGetName=lambda card: card.name,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetCudaComputeCapability=lambda card: card.cc,
        nvmlDeviceGetUUID=lambda card: card.uuid.encode(),
        nvmlDeviceGetMigMode=mig_mode,
    )
    return mod


@dataclass
class FakeCudaDevice:
    """One CUDA device as ``torch.cuda.get_device_properties`` describes it."""

    name: str
    total_mib: int
    cc: tuple[int, int]
    uuid: str = ""
    free_mib: int = 0
    # The caching allocator's counters TorchCudaMemory reads (actors.gpu.sensors), in MiB.
    allocated_mib: int = 0
    reserved_mib: int = 0
    peak_allocated_mib: int = 0
    peak_reserved_mib: int = 0


@dataclass
class _FakeCuda:
    devices: list[FakeCudaDevice]
    archs: list[str]
    init_error: Exception | None
    calls: list[str] = field(default_factory=list)
    fractions: dict[int, float] = field(default_factory=dict)  # set_per_process_memory_fraction, by device

    def is_available(self) -> bool:
        return bool(self.devices) and self.init_error is None

    def init(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def device_count(self) -> int:
        return len(self.devices)

    def get_arch_list(self) -> list[str]:
        return list(self.archs)

    def get_device_properties(self, i: int) -> Any:
        d = self.devices[i]
        props = types.SimpleNamespace(name=d.name, total_memory=d.total_mib * MIB, major=d.cc[0], minor=d.cc[1])
        if d.uuid:
            props.uuid = d.uuid
        return props

    def mem_get_info(self, i: int) -> tuple[int, int]:
        self.calls.append(f"mem_get_info({i})")
        d = self.devices[i]
        return d.free_mib * MIB, d.total_mib * MIB

    def memory_allocated(self, i: int) -> int:
        return self.devices[i].allocated_mib * MIB

    def memory_reserved(self, i: int) -> int:
        return self.devices[i].reserved_mib * MIB

    def max_memory_allocated(self, i: int) -> int:
        return self.devices[i].peak_allocated_mib * MIB

    def max_memory_reserved(self, i: int) -> int:
        return self.devices[i].peak_reserved_mib * MIB

    def reset_peak_memory_stats(self, i: int) -> None:
        d = self.devices[i]
        d.peak_allocated_mib, d.peak_reserved_mib = d.allocated_mib, d.reserved_mib

    def empty_cache(self) -> None:
        # torch gives back the cached blocks of the current device; one device is enough here.
        self.calls.append("empty_cache")
        for d in self.devices:
            d.reserved_mib = d.allocated_mib

    def set_per_process_memory_fraction(self, fraction: float, i: int) -> None:
        self.fractions[i] = fraction


def fake_torch(
    devices: list[FakeCudaDevice] | None = None,
    *,
    version: str = "2.11.0+cu130",
    cuda: str | None = "13.0",
    archs: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100a", "sm_120"),
    init_error: Exception | None = None,
) -> types.ModuleType:
    """A ``torch`` module whose ``torch.cuda`` sees ``devices``; ``cuda=None`` is a CPU-only build,
    ``init_error`` what ``torch.cuda.init()`` raises (no driver, a too-old driver)."""
    mod = types.ModuleType("torch")
    vars(mod).update(
        __version__=version,
        version=types.SimpleNamespace(cuda=cuda),
        cuda=_FakeCuda(list(devices or []), list(archs), init_error),
    )
    return mod
