"""``skald gpu``: detect the GPU, classify its tier, print the resolved configuration;
and the GPU flags shared by ``speak`` and ``serve``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import IO, Any

from actors.gpu.tiers import PROFILES, ResolvedGpuConfig, _cc, detect_gpus, resolve_gpu_config, setting_origins
from config.settings import ConfigError, Settings, load_settings


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """The GPU knobs as flags (``skald gpu``; also meant for ``speak`` and ``serve``)."""
    group = parser.add_argument_group("GPU (override [gpu] and SKALD_* variables)")
    group.add_argument("--gpu-profile", choices=list(PROFILES), help="auto (from detection) or force a tier's values")
    group.add_argument("--parallel-streams", type=int, help="chunks synthesized at once, 0-3 (tts.parallel_streams)")
    group.add_argument("--vram-limit-gb", type=float, help="VRAM the TTS worker may hold (gpu.vram_limit_gb)")
    group.add_argument("--prebuffer-s", type=float, help="audio buffered before playback starts (gpu.prebuffer_s)")


def gpu_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted-key overrides for ``load_settings`` from ``add_gpu_arguments`` flags."""
    pairs = {
        "gpu.profile": getattr(args, "gpu_profile", None),
        "tts.parallel_streams": getattr(args, "parallel_streams", None),
        "gpu.vram_limit_gb": getattr(args, "vram_limit_gb", None),
        "gpu.prebuffer_s": getattr(args, "prebuffer_s", None),
    }
    return {key: value for key, value in pairs.items() if value is not None}


def add_gpu_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``skald gpu [--json] [--torch] [knobs]`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gpu", help="show the GPU found, its tier and the resulting configuration"
    )
    parser.add_argument("--json", action="store_true", help="print JSON: gpus, tier, config, fallback_reason, ...")
    parser.add_argument("--torch", action="store_true", help="also confirm with torch.cuda (imports torch: slower)")
    add_gpu_arguments(parser)
    parser.set_defaults(func=cmd_gpu)
    return parser


def cmd_gpu(args: argparse.Namespace) -> int:
    overrides = gpu_overrides_from_args(args)
    config_file = getattr(args, "config", None)
    try:
        settings = load_settings(config_file, overrides=overrides)
        origins = setting_origins(config_file, overrides=overrides)
    except ConfigError as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return 2
    return gpu_command(settings, bool(args.json), origins=origins, use_torch=bool(getattr(args, "torch", False)))


def gpu_command(
    settings: Settings,
    as_json: bool,
    *,
    origins: Mapping[str, str] | None = None,
    use_torch: bool = False,
    out: IO[str] | None = None,
) -> int:
    """``skald gpu``: detect, classify, resolve and print. 0 on success (a CPU fallback is a
    result, not an error); 2 on a configuration error."""
    out = out or sys.stdout
    try:
        resolved = resolve_gpu_config(settings, detect_gpus(use_torch=use_torch), origins)
    except ConfigError as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return 2
    if as_json:
        out.write(json.dumps(resolved.report(), indent=2) + "\n")
    else:
        out.write(format_report(resolved))
    out.flush()
    return 0


def format_report(resolved: ResolvedGpuConfig) -> str:
    det = resolved.detection
    lines: list[str] = []
    if det.gpus:
        for gpu in det.gpus:
            lines.append(
                f"GPU {gpu.index}: {gpu.name}, {gpu.vram_total_mb} MiB VRAM ({gpu.vram_free_mb} MiB free), "
                f"compute capability {_cc(gpu.compute_capability)}"
            )
        lines.append(
            f"driver {det.driver_version or '?'} (CUDA {det.cuda_driver_version or '?'}), "
            f"torch {det.torch_version or 'not installed'}"
            + (f" built for CUDA {det.torch_cuda}" if det.torch_cuda else "")
            + f", via {det.via or 'nothing'}"
        )
    else:
        lines.append("no GPU found")
    if resolved.fallback_reason:
        lines.append(f"CPU fallback: {resolved.fallback_reason}")
    else:
        lines.append(f"detected tier: {resolved.detected_tier.value} ({resolved.tier_reason})")
    lines.append(f"profile: {resolved.profile} -> {resolved.tier.value} values")
    c = resolved.config
    rows = [
        ("parallel_streams", f"{c.parallel_streams}" + (" (sequential)" if c.parallel_streams <= 1 else "")),
        ("vram_limit_mb", f"{c.vram_limit_mb}" if resolved.on_gpu else "- (CPU)"),
        ("util band", f"{c.util_low_pct:g}-{c.util_high_pct:g} %"),
        ("prebuffer_s", f"{c.prebuffer_s:g}"),
        ("chunk_bias", f"{c.chunk_bias:g}"),
        ("yield_max_ms", f"{c.yield_max_ms:g}"),
    ]
    source_of = {
        "parallel_streams": "parallel_streams",
        "vram_limit_mb": "vram_limit_mb",
        "util band": "util_low_pct",
        "prebuffer_s": "prebuffer_s",
        "chunk_bias": "chunk_bias",
        "yield_max_ms": "yield_max_ms",
    }
    for name, value in rows:
        source = resolved.sources.get(source_of[name], "")
        if name == "util band" and resolved.sources.get("util_high_pct") != source:
            source = f"{source} / {resolved.sources.get('util_high_pct', '')}"
        lines.append(f"  {name:<17}{value:<22}{source}")
    lines.extend(f"note: {note}" for note in (*det.notes, *resolved.notes))
    return "\n".join(lines) + "\n"
