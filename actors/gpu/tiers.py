"""GPU detection, tier classification and the resolved GPU configuration (``skald gpu``).

Who calls what::

    supervisor ── detect_gpus()               NVML only: never imports torch
               ── resolve_gpu_config()  ──► ResolvedGpuConfig.to_dict() ──► actors (ActorSpec.extra)
    tts_worker ── detect_gpus(use_torch=True) confirms that torch can really use the device
               ── actors.gpu.control.VramManager / UtilizationController run on the resolved values

Tiers come from the GPU that ``cuda:0`` names (the one the TTS worker uses), from its total VRAM
and its compute capability (CC). The workload: XTTS v2 holds ~1.9 GB of fp32 weights and needs
~0.3-0.6 GB more per concurrent synthesis stream, and it usually shares the card with the
language model that writes the story (a 14B model is ~9 GB at 4 bits, ~28 GB at 16 bits).

==========  ==================================  =============================================
tier        rule (total VRAM as NVML reports)   why
==========  ==================================  =============================================
High-End    >= 36 GiB and CC >= 8.0             3 streams (10 GiB budget) beside a 16-bit 14B
                                                model; bf16/TF32 tensor cores (Ampere+).
                                                A100 40/80, H100, H200, L40S, A6000, A40.
Mid-Range   >= 20 GiB                           2 streams (6 GiB) beside a 4-bit 14B model.
                                                L4, A10, RTX 3090/4090/5090; Turing and Volta
                                                cards of any size stop here (no bf16).
Modest      >= 7 GiB                            1 stream (3.5 GiB) beside a small model. T4,
                                                RTX 4080/4070/3060/4060 (8 GB), 2070.
Low-End     >= 3.5 GiB                          XTTS fits alone, sequential, deep pre-buffer.
                                                RTX 2060 6 GB, GTX 1660, GTX 1650 4 GB.
CPU         no usable GPU, < 3.5 GiB, or CC     MX450 2 GB; Pascal (6.x) and Volta (7.0) with
            below what the installed torch      the pinned torch 2.11 CUDA 12.8/13.0 wheels,
            build ships kernels for             which start at sm_75.
==========  ==================================  =============================================

The VRAM floors sit below the nominal sizes on purpose: NVML reports a "16 GB" T4 as 15360 MiB,
an "8 GB" RTX 4060 as 8188 MiB and a "24 GB" L4 as 23034 MiB. The full table of real cards is
in ``tests/test_gpu.py`` and ``docs/gpu.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import (
    DEFAULT_FILE,
    ConfigError,
    Settings,
    _env_overrides,
    _flatten,
    _read_toml,
)

__all__ = [
    "PROFILES",
    "TIER_CONFIGS",
    "GpuDetection",
    "GpuInfo",
    "ResolvedGpuConfig",
    "Tier",
    "TierConfig",
    "TierVerdict",
    "biased_chunk_targets",
    "classify_tier",
    "confirm_with_torch",
    "detect_gpus",
    "min_cc_for_torch_build",
    "resolve_gpu_config",
    "setting_origins",
]

MIB = 1024 * 1024
_NVML_LIB = "nvml.dll" if sys.platform.startswith("win") else "libnvidia-ml.so.1"


class Tier(enum.Enum):
    """Hardware class of the GPU the TTS worker uses, best first."""

    HIGH_END = "High-End"
    MID_RANGE = "Mid-Range"
    MODEST = "Modest"
    LOW_END = "Low-End"
    CPU = "CPU"

    @classmethod
    def from_name(cls, name: str) -> Tier:
        for tier in cls:
            if tier.value == name or tier.name == name:
                return tier
        raise ValueError(f"unknown tier {name!r}; tiers: {', '.join(t.value for t in cls)}")


# Smallest total VRAM (MiB, as NVML/torch report it) for each GPU tier. See the module docstring.
VRAM_FLOOR_MB: dict[Tier, int] = {
    Tier.HIGH_END: 36 * 1024,
    Tier.MID_RANGE: 20 * 1024,
    Tier.MODEST: 7 * 1024,
    Tier.LOW_END: 3584,
}
#: High-End needs Ampere or newer: bf16 and TF32 tensor cores for the language model beside us.
HIGH_END_MIN_CC = (8, 0)
#: Oldest CC the pinned torch (2.11, CUDA 12.8 or 13.0 wheels) ships kernels for; used when the
#: installed torch cannot be read (the supervisor without the xtts extra).
DEFAULT_MIN_CC = (7, 5)
#: A limit above this share of the card leaves no room for the CUDA context and the neighbours.
MAX_LIMIT_SHARE = 0.9


@dataclass(frozen=True)
class TierConfig:
    """What a tier (or a profile forcing one) sets; the values in force after overrides.

    Attributes:
        tier: the tier these values come from.
        parallel_streams: chunks synthesized at once. 0 and 1 both mean one at a time
            (``tts.parallel_streams`` already defines 0/1 as sequential); Low-End and CPU say 0,
            and the pressure governor and utilization controller never go below one stream.
        vram_limit_mb: what the TTS worker's torch caching allocator may hold
            (``torch.cuda.set_per_process_memory_fraction``); 0 on the CPU tier.
        util_low_pct, util_high_pct: the GPU utilization band the controller holds while the
            ring is above its low-water mark.
        prebuffer_s: audio buffered before playback starts (the consumer's start threshold) and
            the ring level below which the worker never yields the GPU.
        chunk_bias: multiplier on the chunker's target durations (first chunk untouched). Below
            1 on weak cards: a shorter chunk finishes sooner and needs less activation memory.
        yield_max_ms: the longest pause between chunks the utilization controller may insert.
    """

    tier: Tier
    parallel_streams: int
    vram_limit_mb: int
    util_low_pct: float
    util_high_pct: float
    prebuffer_s: float
    chunk_bias: float
    yield_max_ms: float

    def __post_init__(self) -> None:
        if not 0 <= self.parallel_streams <= 3:
            raise ValueError(f"TierConfig.parallel_streams={self.parallel_streams}: must be 0-3")
        if self.vram_limit_mb < 0:
            raise ValueError(f"TierConfig.vram_limit_mb={self.vram_limit_mb}: must be >= 0")
        if not 0 <= self.util_low_pct < self.util_high_pct <= 100:
            raise ValueError(
                f"TierConfig util band {self.util_low_pct}-{self.util_high_pct}: need 0 <= low < high <= 100"
            )
        if not 0 <= self.prebuffer_s <= 30:
            raise ValueError(f"TierConfig.prebuffer_s={self.prebuffer_s}: must be 0-30")
        if not 0.25 <= self.chunk_bias <= 2:
            raise ValueError(f"TierConfig.chunk_bias={self.chunk_bias}: must be 0.25-2")
        if self.yield_max_ms < 0:
            raise ValueError(f"TierConfig.yield_max_ms={self.yield_max_ms}: must be >= 0")

    @property
    def concurrency(self) -> int:
        """Chunks in synthesis at once (0 and 1 are both sequential)."""
        return max(1, self.parallel_streams)

    @property
    def util_band(self) -> tuple[float, float]:
        return (self.util_low_pct, self.util_high_pct)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tier"] = self.tier.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TierConfig:
        return cls(**{**data, "tier": Tier.from_name(str(data["tier"]))})


# Utilization bands and pre-buffers are the issue's; the rest is reasoned in docs/gpu.md. The CPU
# tier's prebuffer_s is replaced by prebuffer.start_s on resolution (0.5 s: Piper on CPU runs at
# RTF ~0.05-0.2 and the first chunk is ~1.2 s, so half a second of cushion has been enough).
TIER_CONFIGS: dict[Tier, TierConfig] = {
    Tier.HIGH_END: TierConfig(Tier.HIGH_END, 3, 10240, 80.0, 95.0, 0.5, 1.0, 50.0),
    Tier.MID_RANGE: TierConfig(Tier.MID_RANGE, 2, 6144, 60.0, 80.0, 1.0, 1.0, 250.0),
    Tier.MODEST: TierConfig(Tier.MODEST, 1, 3584, 40.0, 60.0, 2.0, 0.9, 1000.0),
    Tier.LOW_END: TierConfig(Tier.LOW_END, 0, 2560, 30.0, 50.0, 3.0, 0.8, 2000.0),
    Tier.CPU: TierConfig(Tier.CPU, 0, 0, 0.0, 100.0, 0.5, 1.0, 0.0),
}

#: gpu.profile -> the tier whose values it forces (None: from detection).
PROFILES: dict[str, Tier | None] = {
    "auto": None,
    "high_performance": Tier.HIGH_END,
    "balanced": Tier.MID_RANGE,
    "modest": Tier.MODEST,
}


@dataclass(frozen=True)
class TierVerdict:
    tier: Tier
    reason: str


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def classify_tier(
    vram_total_mb: float, compute_capability: tuple[int, int], min_cc: tuple[int, int] = DEFAULT_MIN_CC
) -> TierVerdict:
    """The tier of a GPU with ``vram_total_mb`` MiB and ``compute_capability``; ``min_cc`` is the
    oldest architecture the installed torch runs on (``min_cc_for_torch_build``)."""
    gb = vram_total_mb / 1024
    if tuple(compute_capability) < tuple(min_cc):
        return TierVerdict(
            Tier.CPU,
            f"compute capability {_cc(compute_capability)} is below {_cc(min_cc)}, "
            "the oldest the installed PyTorch build has CUDA kernels for",
        )
    if vram_total_mb < VRAM_FLOOR_MB[Tier.LOW_END]:
        return TierVerdict(
            Tier.CPU,
            f"{gb:.1f} GiB VRAM is below the {VRAM_FLOOR_MB[Tier.LOW_END] / 1024:g} GiB XTTS v2 needs "
            "(~1.9 GiB of weights, activations and the CUDA context)",
        )
    for tier in (Tier.HIGH_END, Tier.MID_RANGE, Tier.MODEST, Tier.LOW_END):
        if vram_total_mb < VRAM_FLOOR_MB[tier]:
            continue
        floor = f"{gb:.1f} GiB VRAM >= {VRAM_FLOOR_MB[tier] / 1024:g} GiB"
        if tier is Tier.HIGH_END and tuple(compute_capability) < HIGH_END_MIN_CC:
            return TierVerdict(
                Tier.MID_RANGE,
                f"{floor} but compute capability {_cc(compute_capability)} < {_cc(HIGH_END_MIN_CC)} "
                "(no bf16/TF32 tensor cores) caps it at Mid-Range",
            )
        return TierVerdict(tier, f"{floor}, compute capability {_cc(compute_capability)}")
    raise AssertionError("unreachable: Low-End floor checked above")


# ============================================================================ detection


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
    common = {"driver_version": nvml.driver_version, "cuda_driver_version": nvml.cuda_driver_version}

    if use_torch:
        probe, torch_version, torch_cuda, arch_min = _probe_torch(nvml_visible)
        min_cc = arch_min or min_cc_for_torch_build(torch_version, torch_cuda)
        if probe.reason:
            reason = probe.reason if not nvml.reason else f"{nvml.reason}; {probe.reason}"
            return GpuDetection(
                tuple(nvml_visible),
                reason,
                "nvml" if not nvml.reason else "",
                torch_version=torch_version,
                torch_cuda=torch_cuda,
                min_compute_capability=min_cc,
                notes=tuple(notes),
                **common,
            )
        if nvml.reason:
            notes.append(f"{nvml.reason}: no utilization or per-process memory sampling")
        return GpuDetection(
            tuple(probe.gpus),
            "",
            "torch" if nvml.reason else "nvml+torch",
            torch_version=torch_version,
            torch_cuda=torch_cuda,
            min_compute_capability=min_cc,
            notes=tuple(notes),
            **common,
        )

    reason = nvml.reason or hidden_reason
    if not reason and build and not torch_cuda:
        reason = f"torch {torch_version} is a CPU-only build: XTTS cannot use the GPU"
    if not reason and not build:
        notes.append(
            f"torch is not installed (the xtts extra): tier assumes its pinned build (CC >= {_cc(DEFAULT_MIN_CC)})"
        )
    return GpuDetection(
        tuple(nvml_visible),
        reason,
        "nvml" if not nvml.reason else "",
        torch_version=torch_version,
        torch_cuda=torch_cuda,
        min_compute_capability=min_cc,
        notes=tuple(notes),
        **common,
    )


def tier_of(detection: GpuDetection) -> TierVerdict:
    """The detected tier: CPU with the fallback reason when no GPU is usable."""
    primary = detection.primary
    if not detection.usable or primary is None:
        return TierVerdict(Tier.CPU, detection.fallback_reason or "no GPU found")
    if primary.vram_total_mb <= 0:
        return TierVerdict(Tier.CPU, f"GPU 0 ({primary.name}) reports no memory size")
    return classify_tier(primary.vram_total_mb, primary.compute_capability, detection.min_compute_capability)


# ============================================================================ resolution

# The settings keys that feed TierConfig fields. tts.parallel_streams is THE parallel-streams knob
# (it predates the [gpu] section and already meant "-1 = from the GPU tier").
_KNOBS: dict[str, str] = {
    "parallel_streams": "tts.parallel_streams",
    "vram_limit_mb": "gpu.vram_limit_gb",
    "prebuffer_s": "gpu.prebuffer_s",
    "util_low_pct": "gpu.util_target_low",
    "util_high_pct": "gpu.util_target_high",
}


@dataclass(frozen=True)
class ResolvedGpuConfig:
    """Detection, tier, profile and the values in force, with where each value came from.

    The supervisor resolves once and hands ``to_dict()`` to the actors; the TTS worker feeds
    ``config`` to ``VramManager``/``UtilizationController`` and the chunker (``chunk_bias``), the
    audio consumer takes ``config.prebuffer_s`` as its start threshold."""

    detection: GpuDetection
    detected_tier: Tier
    tier_reason: str
    profile: str
    config: TierConfig
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def tier(self) -> Tier:
        """The tier whose values are in force (a profile may force one other than detected)."""
        return self.config.tier

    @property
    def on_gpu(self) -> bool:
        return self.config.tier is not Tier.CPU

    @property
    def fallback_reason(self) -> str:
        """Why synthesis runs on the CPU tier ("" when on a GPU)."""
        return "" if self.on_gpu else self.tier_reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "detection": self.detection.to_dict(),
            "detected_tier": self.detected_tier.value,
            "tier_reason": self.tier_reason,
            "profile": self.profile,
            "config": self.config.to_dict(),
            "sources": dict(self.sources),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedGpuConfig:
        return cls(
            detection=GpuDetection.from_dict(data["detection"]),
            detected_tier=Tier.from_name(str(data["detected_tier"])),
            tier_reason=str(data["tier_reason"]),
            profile=str(data["profile"]),
            config=TierConfig.from_dict(data["config"]),
            sources=dict(data.get("sources", {})),
            notes=tuple(data.get("notes", ())),
        )

    def report(self) -> dict[str, Any]:
        """The ``skald gpu --json`` document."""
        return {
            "gpus": [
                {
                    "name": g.name,
                    "vram_total_mb": g.vram_total_mb,
                    "vram_free_mb": g.vram_free_mb,
                    "compute_capability": _cc(g.compute_capability),
                    "index": g.index,
                    "uuid": g.uuid,
                }
                for g in self.detection.gpus
            ],
            "tier": self.tier.value,
            "detected_tier": self.detected_tier.value,
            "tier_reason": self.tier_reason,
            "profile": self.profile,
            "config": self.config.to_dict(),
            "sources": dict(self.sources),
            "fallback_reason": self.fallback_reason,
            "driver_version": self.detection.driver_version,
            "cuda_driver_version": self.detection.cuda_driver_version,
            "torch": {"version": self.detection.torch_version, "cuda": self.detection.torch_cuda},
            "via": self.detection.via,
            "notes": [*self.detection.notes, *self.notes],
        }


def _fail(key: str, value: Any, origins: Mapping[str, str], why: str) -> ConfigError:
    origin = origins.get(key)
    where = f" (from {origin})" if origin else ""
    return ConfigError(f"config error: {key} = {value!r}{where}: {why}")


def _sentinel_or(key: str, value: float, lo: float, hi: float, unit: str, origins: Mapping[str, str]) -> bool:
    """True when ``value`` is set (not -1); ConfigError when it is neither -1 nor in [lo, hi]."""
    if value == -1:
        return False
    if not lo <= value <= hi:
        raise _fail(key, value, origins, f"must be -1 (from the tier) or between {lo:g} and {hi:g}{unit}")
    return True


def resolve_gpu_config(
    settings: Settings, detection: GpuDetection, origins: Mapping[str, str] | None = None
) -> ResolvedGpuConfig:
    """Merge tier defaults with the user's knobs; precedence CLI > env > file > tier.

    ``settings`` already carries CLI > env > file (``load_settings``); here a knob left at -1 takes
    the tier's value. ``origins`` (``setting_origins``) only improves messages and ``sources``.
    Raises ``ConfigError`` naming the key, value, origin and allowed range."""
    origins = dict(origins or {})
    g = settings.gpu
    if g.profile not in PROFILES:
        raise _fail("gpu.profile", g.profile, origins, f"must be one of: {', '.join(PROFILES)}")
    streams = settings.tts.parallel_streams
    if not (streams == -1 or 0 <= streams <= 3):
        raise _fail("tts.parallel_streams", streams, origins, "must be -1 (from the tier) or between 0 and 3")
    set_vram = _sentinel_or("gpu.vram_limit_gb", g.vram_limit_gb, 0.1, 1024.0, " GB", origins)
    set_prebuffer = _sentinel_or("gpu.prebuffer_s", g.prebuffer_s, 0.0, 30.0, " s", origins)
    set_low = _sentinel_or("gpu.util_target_low", g.util_target_low, 0.0, 100.0, " %", origins)
    set_high = _sentinel_or("gpu.util_target_high", g.util_target_high, 0.0, 100.0, " %", origins)

    verdict = tier_of(detection)
    notes: list[str] = []
    forced = PROFILES[g.profile]
    if forced is None:
        tier, label = verdict.tier, f"tier {verdict.tier.value}"
    elif verdict.tier is Tier.CPU:
        tier, label = Tier.CPU, f"tier {Tier.CPU.value}"
        notes.append(f"profile {g.profile} ignored: no usable GPU ({verdict.reason})")
    else:
        tier, label = forced, f"profile {g.profile}"
        if _rank(forced) > _rank(verdict.tier):
            notes.append(f"profile {g.profile} forces {forced.value} values on a {verdict.tier.value} GPU")

    base = TIER_CONFIGS[tier]
    values = base.to_dict()
    sources = {name: label for name in values if name != "tier"}
    if tier is Tier.CPU:
        values["prebuffer_s"] = settings.prebuffer.start_s
        sources["prebuffer_s"] = "prebuffer.start_s" + (
            f" ({origins['prebuffer.start_s']})" if "prebuffer.start_s" in origins else ""
        )

    def explicit(name: str, value: Any) -> None:
        key = _KNOBS[name]
        values[name] = value
        sources[name] = origins.get(key, key)

    if streams >= 0:
        explicit("parallel_streams", streams)
    if set_vram:
        if tier is Tier.CPU:
            notes.append("gpu.vram_limit_gb ignored on the CPU tier")
        else:
            explicit("vram_limit_mb", round(g.vram_limit_gb * 1024))
    if set_prebuffer:
        explicit("prebuffer_s", g.prebuffer_s)
    if set_low:
        explicit("util_low_pct", g.util_target_low)
    if set_high:
        explicit("util_high_pct", g.util_target_high)
    if not values["util_low_pct"] < values["util_high_pct"]:
        key = "gpu.util_target_low" if set_low else "gpu.util_target_high"
        raise _fail(
            key,
            g.util_target_low if set_low else g.util_target_high,
            origins,
            f"the band must satisfy low < high (got {values['util_low_pct']:g} - {values['util_high_pct']:g} %)",
        )
    low_water = settings.prebuffer.low_water_s
    if low_water > 0 and values["prebuffer_s"] <= low_water:
        raise _fail(
            "gpu.prebuffer_s",
            values["prebuffer_s"],
            origins,
            f"must be above prebuffer.low_water_s ({low_water:g})",
        )

    primary = detection.primary
    if tier is not Tier.CPU and primary is not None and primary.vram_total_mb > 0:
        cap = int(primary.vram_total_mb * MAX_LIMIT_SHARE)
        if values["vram_limit_mb"] > cap:
            notes.append(
                f"vram limit {values['vram_limit_mb']} MiB ({sources['vram_limit_mb']}) capped at {cap} MiB, "
                f"{MAX_LIMIT_SHARE:.0%} of {primary.name}'s {primary.vram_total_mb} MiB"
            )
            values["vram_limit_mb"] = cap
            sources["vram_limit_mb"] += f", capped at {MAX_LIMIT_SHARE:.0%} of the card"
    return ResolvedGpuConfig(
        detection=detection,
        detected_tier=verdict.tier,
        tier_reason=verdict.reason,
        profile=g.profile,
        config=TierConfig.from_dict(values),
        sources=sources,
        notes=tuple(notes),
    )


def _rank(tier: Tier) -> int:
    return [Tier.CPU, Tier.LOW_END, Tier.MODEST, Tier.MID_RANGE, Tier.HIGH_END].index(tier)


def confirm_with_torch(settings: Settings, resolved: ResolvedGpuConfig) -> ResolvedGpuConfig:
    """In the TTS worker: detect again through ``torch.cuda`` (which really allocates on the
    device) and resolve again. Where torch and NVML disagree on the tier, torch wins and a note
    says so; the value origins found by the supervisor are kept."""
    confirmed = resolve_gpu_config(settings, detect_gpus(use_torch=True))
    sources = {name: resolved.sources.get(name, src) for name, src in confirmed.sources.items()}
    notes = list(confirmed.notes)
    if confirmed.tier is not resolved.tier:
        notes.append(
            f"torch.cuda gives tier {confirmed.tier.value} where NVML gave {resolved.tier.value}"
            + (f": {confirmed.fallback_reason}" if confirmed.fallback_reason else "")
        )
        sources = dict(confirmed.sources)
    return dataclasses.replace(confirmed, sources=sources, notes=tuple(notes))


def setting_origins(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Where each non-default setting came from (file path, ``SKALD_*`` variable or "command
    line"), by the same precedence as ``load_settings``; call it after ``load_settings`` succeeded."""
    origins: dict[str, str] = {}
    defaults = _read_toml(DEFAULT_FILE)
    if config_file is not None:
        for dotted in _flatten(_read_toml(Path(config_file))):
            origins[dotted] = str(config_file)
    for dotted, (_raw, var) in _env_overrides(os.environ if env is None else env, defaults).items():
        origins[dotted] = var
    for dotted in overrides or {}:
        origins[dotted] = "command line"
    return origins


def biased_chunk_targets(settings: Settings, bias: float) -> tuple[float, float]:
    """The chunker's (target_min_s, target_max_s) scaled by ``bias`` and kept inside the hard
    bounds; the first chunk's length is left alone (time to first audio)."""
    c = settings.chunker
    lo = min(max(c.target_min_s * bias, c.hard_min_s), c.hard_max_s)
    hi = min(max(c.target_max_s * bias, lo), c.hard_max_s)
    return lo, hi
