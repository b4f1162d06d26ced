"""What GPU is there: NVML and ``torch.cuda`` probing (``detect_gpus``), never raising.

The supervisor calls ``detect_gpus()`` (NVML only, torch is not imported: the installed torch's
build is read from ``torch/version.py``); the TTS worker calls ``detect_gpus(use_torch=True)``,
which asks torch itself and wins where the two disagree. A missing or broken GPU stack gives a
result with no usable GPU and a ``fallback_reason`` that names the cause. Classification into
tiers is ``actors.gpu.tiers``; this module knows nothing of tiers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MIN_CC",
    "GpuDetection",
    "GpuInfo",
    "detect_gpus",
    "min_cc_for_torch_build",
]

MIB = 1024 * 1024
_NVML_LIB = "nvml.dll" if sys.platform.startswith("win") else "libnvidia-ml.so.1"
#: Oldest CC the pinned torch (2.11, CUDA 12.8 or 13.0 wheels) ships kernels for; used when the
#: installed torch cannot be read (the supervisor without the xtts extra).
DEFAULT_MIN_CC = (7, 5)


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML (or torch) sees it. ``index`` is its CUDA index (``cuda:<index>``)."""

    index: int
    name: str
    vram_total_mb: int
    vram_free_mb: int
    compute_capability: tuple[int, int]
    uuid: str = ""
    nvml_index: int = -1  # NVML's own numbering (PCI order), for utilization sampling; -1 unknown

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "vram_total_mb": self.vram_total_mb,
            "vram_free_mb": self.vram_free_mb,
            "compute_capability": _cc(self.compute_capability),
            "uuid": self.uuid,
            "nvml_index": self.nvml_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuInfo:
        major, minor = str(data["compute_capability"]).split(".")
        return cls(
            index=int(data["index"]),
            name=str(data["name"]),
            vram_total_mb=int(data["vram_total_mb"]),
            vram_free_mb=int(data["vram_free_mb"]),
            compute_capability=(int(major), int(minor)),
            uuid=str(data.get("uuid", "")),
            nvml_index=int(data.get("nvml_index", -1)),
        )


@dataclass(frozen=True)
class GpuDetection:
    """What ``detect_gpus`` found. ``fallback_reason`` is empty when ``gpus[0]`` is usable."""

    gpus: tuple[GpuInfo, ...] = ()
    fallback_reason: str = ""
    via: str = ""  # "nvml", "nvml+torch", "torch" or "" (nothing answered)
    driver_version: str = ""
    cuda_driver_version: str = ""  # the newest CUDA the driver supports
    torch_version: str = ""
    torch_cuda: str = ""  # the CUDA the installed torch was built with; "" = not installed or CPU-only
    min_compute_capability: tuple[int, int] = DEFAULT_MIN_CC
    notes: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.fallback_reason and bool(self.gpus)

    @property
    def primary(self) -> GpuInfo | None:
        """The GPU ``cuda:0`` names: the one the TTS worker synthesizes on."""
        return self.gpus[0] if self.gpus else None

    @property
    def count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gpus"] = [gpu.to_dict() for gpu in self.gpus]
        data["min_compute_capability"] = _cc(self.min_compute_capability)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuDetection:
        major, minor = str(data.get("min_compute_capability", _cc(DEFAULT_MIN_CC))).split(".")
        return cls(
            gpus=tuple(GpuInfo.from_dict(g) for g in data.get("gpus", ())),
            fallback_reason=str(data.get("fallback_reason", "")),
            via=str(data.get("via", "")),
            driver_version=str(data.get("driver_version", "")),
            cuda_driver_version=str(data.get("cuda_driver_version", "")),
            torch_version=str(data.get("torch_version", "")),
            torch_cuda=str(data.get("torch_cuda", "")),
            min_compute_capability=(int(major), int(minor)),
            notes=tuple(data.get("notes", ())),
        )


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+", 1)[0])[:2])


def min_cc_for_torch_build(torch_version: str, torch_cuda: str) -> tuple[int, int]:
    """Oldest compute capability an official PyTorch wheel ships kernels for.

    From PyTorch's RELEASE.md support matrix: CUDA 12.8+/13.x wheels start at Turing (7.5)
    from torch 2.11 on and at Volta (7.0) in 2.8-2.10; the CUDA 12.6 (and older) wheels still
    reach back to Maxwell (5.0). With torch imported, ``detect_gpus(use_torch=True)`` reads the
    real ``torch.cuda.get_arch_list()`` instead of this table."""
    cuda = _version_tuple(torch_cuda)
    torch_v = _version_tuple(torch_version)
    if not cuda:
        return DEFAULT_MIN_CC
    if cuda >= (12, 8):
        if torch_v >= (2, 11) or cuda >= (13, 0):
            return (7, 5)
        return (7, 0) if torch_v >= (2, 8) else (5, 0)
    return (5, 0)


def _torch_build_without_import() -> tuple[str, str] | None:
    """``(version, cuda)`` of the installed torch read from ``torch/version.py``, so the supervisor
    learns the build without importing torch. None when torch is not installed."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        return str(torch.__version__), str(torch.version.cuda or "")
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        text = Path(spec.origin).with_name("version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return (version.group(1) if version else "?", cuda.group(1) if cuda else "")


@dataclass
class _Probe:
    gpus: list[GpuInfo] = field(default_factory=list)
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    driver_version: str = ""
    cuda_driver_version: str = ""


def _nvml_error_reason(exc: BaseException, during: str) -> str:
    kind = type(exc).__name__
    if kind == "NVMLError_LibraryNotFound":
        return f"NVML: {_NVML_LIB} not found (no NVIDIA driver installed)"
    if kind == "NVMLError_DriverNotLoaded":
        return "NVML: the NVIDIA kernel driver is not loaded"
    if kind == "NVMLError_FunctionNotFound":
        return f"NVML: {_NVML_LIB} has no {during} (a broken or incompatible driver library)"
    if kind == "NVMLError_NoPermission":
        return f"NVML: no permission to query the GPU ({during})"
    return f"NVML: {during} failed: {exc} ({kind})"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _probe_nvml() -> _Probe:
    probe = _Probe()
    try:
        import pynvml
    except ImportError:
        probe.reason = "NVML: nvidia-ml-py is not installed (it comes with the xtts extra)"
        return probe
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        probe.reason = _nvml_error_reason(exc, "nvmlInitWithFlags")
        return probe
    try:
        probe.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())
            probe.cuda_driver_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except pynvml.NVMLError:
            pass
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                total, free = int(mem.total) // MIB, int(mem.free) // MIB
            except pynvml.NVMLError as exc:
                total = free = 0
                probe.notes.append(f"NVML: GPU {i} ({name}) reports no memory size: {exc}")
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
                if current == pynvml.NVML_DEVICE_MIG_ENABLE:
                    probe.notes.append(
                        f"GPU {i} ({name}) is in MIG mode: CUDA sees MIG instances, smaller than the "
                        "card; the TTS worker's torch check measures the instance it gets"
                    )
            except pynvml.NVMLError:
                pass  # not a MIG-capable card
            probe.gpus.append(GpuInfo(i, name, total, free, (int(major), int(minor)), uuid, nvml_index=i))
        if count == 0:
            probe.reason = "NVML: the driver is loaded but reports no GPU"
    except pynvml.NVMLError as exc:
        probe.reason = _nvml_error_reason(exc, "querying the GPUs")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return probe


def _visible(gpus: list[GpuInfo], notes: list[str]) -> tuple[list[GpuInfo], str]:
    """Apply ``CUDA_VISIBLE_DEVICES`` to NVML's list (NVML ignores it; CUDA does not), renumbering
    the survivors as CUDA will: ``cuda:0`` is the first listed. Returns (visible, reason-if-none)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        if len(gpus) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({g.name for g in gpus}) > 1:
            notes.append(
                "several different GPUs and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA numbers the fastest "
                "first, NVML by PCI bus, so cuda:0 may not be NVML's GPU 0 (the TTS worker confirms with torch)"
            )
        return gpus, ""
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            break
        match: GpuInfo | None = None
        if entry.isdigit():
            match = next((g for g in gpus if g.nvml_index == int(entry)), None)
        elif entry.startswith("GPU-"):
            match = next((g for g in gpus if g.uuid.startswith(entry)), None)
        elif entry.startswith("MIG-"):
            notes.append(f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); sizes below are the whole card's")
            return gpus, ""
        if match is None:
            break  # CUDA stops at the first entry it cannot resolve, and so do we
        chosen.append(match)
    if not chosen:
        return [], f"CUDA_VISIBLE_DEVICES={raw!r} leaves no GPU visible"
    return [dataclasses.replace(g, index=i) for i, g in enumerate(chosen)], ""


def _probe_torch(nvml_gpus: list[GpuInfo]) -> tuple[_Probe, str, str, tuple[int, int] | None]:
    """Ask torch itself. Returns (probe, torch version, torch CUDA, min CC from the arch list).
    ``nvml_gpus``: NVML's view after CUDA_VISIBLE_DEVICES, to pair each CUDA device with its NVML
    index (by UUID; by position when UUIDs are unavailable and the counts agree)."""
    probe = _Probe()
    try:
        import torch
    except ImportError:
        probe.reason = "torch: not installed (it comes with the xtts extra)"
        return probe, "", "", None
    version, cuda = str(torch.__version__), str(torch.version.cuda or "")
    if not cuda:
        probe.reason = f"torch {version} is a CPU-only build: XTTS cannot use the GPU"
        return probe, version, cuda, None
    try:
        torch.cuda.init()  # raises with the driver's own words when CUDA is unusable
    except Exception as exc:  # any failure here means "no CUDA", and its text is the reason
        probe.reason = f"torch.cuda: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return probe, version, cuda, None
    count = torch.cuda.device_count()
    if count == 0:
        probe.reason = "torch.cuda: no CUDA device visible"
        return probe, version, cuda, None
    archs = [re.fullmatch(r"sm_(\d+)(\d)[a-z]?", a) for a in torch.cuda.get_arch_list()]
    min_cc = min(((int(m.group(1)), int(m.group(2))) for m in archs if m), default=None)
    by_uuid = {g.uuid.removeprefix("GPU-"): g for g in nvml_gpus}
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        uuid = str(getattr(props, "uuid", ""))
        nvml = by_uuid.get(uuid.removeprefix("GPU-"))
        if nvml is None and len(nvml_gpus) == count:
            nvml = nvml_gpus[i]
        total = int(props.total_memory) // MIB
        if i == 0:
            free_b, _total_b = torch.cuda.mem_get_info(0)  # cuda:0 is ours: creating its context is fine
            free = int(free_b) // MIB
        else:
            free = nvml.vram_free_mb if nvml else 0
        probe.gpus.append(
            GpuInfo(
                i,
                str(props.name),
                total,
                free,
                (int(props.major), int(props.minor)),
                nvml.uuid if nvml else uuid,
                nvml_index=nvml.nvml_index if nvml else -1,
            )
        )
    return probe, version, cuda, min_cc


def detect_gpus(use_torch: bool = False) -> GpuDetection:
    """Find the GPUs with NVML and, with ``use_torch``, confirm with ``torch.cuda``.

    Never raises for a missing or broken GPU stack: the result then has no usable GPU and a
    ``fallback_reason`` saying why (e.g. ``"NVML: libnvidia-ml.so.1 not found (no NVIDIA driver
    installed)"``). Without ``use_torch`` torch is not imported; its build is read from
    ``torch/version.py`` so a CPU-only torch is still caught."""
    nvml = _probe_nvml()
    notes = list(nvml.notes)
    nvml_visible, hidden_reason = _visible(nvml.gpus, notes) if not nvml.reason else ([], "")
    build = _torch_build_without_import()
    torch_version, torch_cuda = build if build else ("", "")
    min_cc = min_cc_for_torch_build(torch_version, torch_cuda) if build else DEFAULT_MIN_CC

    def detection(gpus: Sequence[GpuInfo], reason: str, via: str) -> GpuDetection:
        # Everything but the GPUs, the fallback reason and the source is read the same way on
        # every path; notes is read at return time, after the paths have added theirs.
        return GpuDetection(
            tuple(gpus),
            reason,
            via,
            driver_version=nvml.driver_version,
            cuda_driver_version=nvml.cuda_driver_version,
            torch_version=torch_version,
            torch_cuda=torch_cuda,
            min_compute_capability=min_cc,
            notes=tuple(notes),
        )

    if use_torch:
        probe, torch_version, torch_cuda, arch_min = _probe_torch(nvml_visible)
        min_cc = arch_min or min_cc_for_torch_build(torch_version, torch_cuda)
        if probe.reason:
            reason = probe.reason if not nvml.reason else f"{nvml.reason}; {probe.reason}"
            return detection(nvml_visible, reason, "nvml" if not nvml.reason else "")
        if nvml.reason:
            notes.append(f"{nvml.reason}: no utilization or per-process memory sampling")
        return detection(probe.gpus, "", "torch" if nvml.reason else "nvml+torch")

    reason = nvml.reason or hidden_reason
    if not reason and build and not torch_cuda:
        reason = f"torch {torch_version} is a CPU-only build: XTTS cannot use the GPU"
    if not reason and not build:
        notes.append(
            f"torch is not installed (the xtts extra): tier assumes its pinned build (CC >= {_cc(DEFAULT_MIN_CC)})"
        )
    return detection(nvml_visible, reason, "nvml" if not nvml.reason else "")
