"""GPU tiers: the tier table, classification and the resolved GPU configuration (``skald gpu``).

Detection (NVML, ``torch.cuda``) is ``actors.gpu.detect``; the controllers that run on the
resolved values are ``actors.gpu.control``. Who calls what::

    supervisor ── detect_gpus()               NVML only: never imports torch (actors.gpu.detect)
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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Detection lives in actors.gpu.detect; its names are re-exported here because resolution takes
# a GpuDetection and callers (skald gpu, the supervisor) import both from one place.
from actors.gpu.detect import (
    DEFAULT_MIN_CC,
    GpuDetection,
    GpuInfo,
    _cc,
    detect_gpus,
    min_cc_for_torch_build,
)
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
    "tier_of",
]


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
    # Not coverable: every size at or above the Low-End floor (checked above) returns in the loop.
    raise AssertionError("unreachable: Low-End floor checked above")  # pragma: no cover


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
        key = settings.stage_start_key
        values["prebuffer_s"] = settings.stage_start_s
        sources["prebuffer_s"] = key + (f" ({origins[key]})" if key in origins else "")

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
