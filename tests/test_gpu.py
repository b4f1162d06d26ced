"""GPU detection, tiers and the resolved configuration (``actors/gpu/detect.py``, ``actors/gpu/tiers.py``),
on a machine without a GPU.

The tier table is checked against real cards: their published VRAM and compute capability, and
the total NVML reports for them (a little below the box's number). Detection is exercised for
real: NVML is absent here, and a broken ``libnvidia-ml.so.1`` is put in front of the loader in a
subprocess. Resolution tests describe a GPU by its published numbers (a ``GpuDetection`` record),
since no GPU answers here.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.cli.gpu import add_gpu_parser, gpu_command
from actors.gpu.tiers import (
    TIER_CONFIGS,
    VRAM_FLOOR_MB,
    GpuDetection,
    GpuInfo,
    ResolvedGpuConfig,
    Tier,
    biased_chunk_targets,
    classify_tier,
    confirm_with_torch,
    detect_gpus,
    min_cc_for_torch_build,
    resolve_gpu_config,
    setting_origins,
)
from config.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
CPU, LOW, MODEST, MID, HIGH = Tier.CPU, Tier.LOW_END, Tier.MODEST, Tier.MID_RANGE, Tier.HIGH_END

# name, nominal GB, MiB as NVML reports it, compute capability,
# tier with the pinned torch 2.11 (CUDA 12.8/13.0 wheels: sm_75+), tier with a CUDA 12.6 wheel (sm_50+)
REAL_GPUS: list[tuple[str, float, int, tuple[int, int], Tier, Tier]] = [
    ("H200", 141, 143771, (9, 0), HIGH, HIGH),
    ("B200", 180, 183359, (10, 0), HIGH, HIGH),
    ("H100 80GB", 80, 81559, (9, 0), HIGH, HIGH),
    ("A100 80GB", 80, 81920, (8, 0), HIGH, HIGH),
    ("A100 40GB", 40, 40960, (8, 0), HIGH, HIGH),
    ("L40S", 48, 46068, (8, 9), HIGH, HIGH),
    ("RTX A6000", 48, 49140, (8, 6), HIGH, HIGH),
    ("A40", 48, 46068, (8, 6), HIGH, HIGH),
    ("Quadro RTX 8000", 48, 49152, (7, 5), MID, MID),  # Turing: no bf16, capped
    ("RTX 5090", 32, 32607, (12, 0), MID, MID),
    ("RTX 4090", 24, 24564, (8, 9), MID, MID),
    ("RTX 3090", 24, 24576, (8, 6), MID, MID),
    ("L4", 24, 23034, (8, 9), MID, MID),
    ("A10", 24, 23028, (8, 6), MID, MID),
    ("V100 32GB", 32, 32768, (7, 0), CPU, MID),  # Volta: no kernels in the pinned wheels
    ("V100 16GB", 16, 16384, (7, 0), CPU, MODEST),
    ("T4", 16, 15360, (7, 5), MODEST, MODEST),
    ("A2", 16, 15356, (8, 6), MODEST, MODEST),
    ("RTX 4080", 16, 16376, (8, 9), MODEST, MODEST),
    ("RTX 4070", 12, 12282, (8, 9), MODEST, MODEST),
    ("RTX 3060", 12, 12288, (8, 6), MODEST, MODEST),
    ("RTX 4060", 8, 8188, (8, 9), MODEST, MODEST),
    ("RTX 2070", 8, 8192, (7, 5), MODEST, MODEST),
    ("RTX 2060", 6, 6144, (7, 5), LOW, LOW),
    ("GTX 1660 Super", 6, 6144, (7, 5), LOW, LOW),
    ("GTX 1650", 4, 4096, (7, 5), LOW, LOW),
    ("RTX 3050 Laptop 4GB", 4, 4096, (8, 6), LOW, LOW),
    ("MX450", 2, 2048, (7, 5), CPU, CPU),  # too little VRAM for XTTS v2 on any build
    ("GTX 1080 Ti", 11, 11264, (6, 1), CPU, MODEST),  # Pascal
    ("Tesla P100", 16, 16280, (6, 0), CPU, MODEST),
    ("GTX 1060 6GB", 6, 6144, (6, 1), CPU, LOW),
    ("GTX 970", 4, 4096, (5, 2), CPU, LOW),  # Maxwell
]


@pytest.mark.parametrize(("name", "gb", "nvml_mib", "cc", "pinned", "cu126"), REAL_GPUS, ids=[r[0] for r in REAL_GPUS])
def test_tier_of_real_gpus(name: str, gb: float, nvml_mib: int, cc: tuple[int, int], pinned: Tier, cu126: Tier) -> None:
    pinned_min = min_cc_for_torch_build("2.11.0+cu130", "13.0")
    verdict = classify_tier(nvml_mib, cc, pinned_min)
    assert verdict.tier is pinned, f"{name}: {verdict}"
    assert verdict.reason
    # The box's nominal size lands in the same tier as what NVML reports.
    assert classify_tier(gb * 1024, cc, pinned_min).tier is pinned
    assert classify_tier(nvml_mib, cc, min_cc_for_torch_build("2.11.0+cu126", "12.6")).tier is cu126


def test_tier_reasons_name_the_limiting_fact() -> None:
    assert "compute capability 6.1 is below 7.5" in classify_tier(11264, (6, 1)).reason
    assert "2.0 GiB VRAM is below the 3.5 GiB" in classify_tier(2048, (7, 5)).reason
    assert "caps it at Mid-Range" in classify_tier(49152, (7, 5)).reason
    assert classify_tier(81559, (9, 0)).reason == "79.6 GiB VRAM >= 36 GiB, compute capability 9.0"


@pytest.mark.parametrize(
    ("mib", "tier"),
    [
        (36 * 1024 - 1, MID),
        (36 * 1024, HIGH),
        (20 * 1024 - 1, MODEST),
        (20 * 1024, MID),
        (7 * 1024 - 1, LOW),
        (7 * 1024, MODEST),
        (3583, CPU),
        (3584, LOW),
    ],
)
def test_tier_boundaries(mib: int, tier: Tier) -> None:
    assert classify_tier(mib, (8, 9)).tier is tier


@pytest.mark.parametrize(
    ("version", "cuda", "expected"),
    [
        ("2.11.0+cu130", "13.0", (7, 5)),
        ("2.11.0", "12.8", (7, 5)),
        ("2.9.1+cu128", "12.8", (7, 0)),
        ("2.11.0+cu126", "12.6", (5, 0)),
        ("2.11.0+cpu", "", (7, 5)),
    ],
)
def test_min_compute_capability_follows_the_torch_build(version: str, cuda: str, expected: tuple[int, int]) -> None:
    assert min_cc_for_torch_build(version, cuda) == expected


def test_tier_configs_match_the_issue() -> None:
    assert [TIER_CONFIGS[t].parallel_streams for t in (HIGH, MID, MODEST, LOW, CPU)] == [3, 2, 1, 0, 0]
    assert [TIER_CONFIGS[t].util_band for t in (HIGH, MID, MODEST, LOW)] == [
        (80.0, 95.0),
        (60.0, 80.0),
        (40.0, 60.0),
        (30.0, 50.0),
    ]
    assert [TIER_CONFIGS[t].prebuffer_s for t in (HIGH, MID, MODEST, LOW)] == [0.5, 1.0, 2.0, 3.0]
    limits = [TIER_CONFIGS[t].vram_limit_mb for t in (HIGH, MID, MODEST, LOW)]
    assert limits == sorted(limits, reverse=True) and limits[-1] >= 2048  # XTTS v2 fits in the smallest
    for tier in (HIGH, MID, MODEST, LOW):  # each budget leaves most of its tier's smallest card to others
        assert TIER_CONFIGS[tier].vram_limit_mb <= 0.75 * VRAM_FLOOR_MB[tier]


# ---------------------------------------------------------------- detection, for real


def test_detection_here_falls_back_to_cpu_with_the_real_reason() -> None:
    detection = detect_gpus()
    assert not detection.usable
    assert detection.gpus == ()
    assert detection.fallback_reason.startswith("NVML: ")
    assert "libnvidia-ml.so.1 not found" in detection.fallback_reason
    resolved = resolve_gpu_config(load_settings(env={}), detection)
    assert resolved.tier is CPU and resolved.fallback_reason == detection.fallback_reason


def test_detection_with_torch_adds_torch_s_own_reason() -> None:
    detection = detect_gpus(use_torch=True)
    assert not detection.usable
    assert "torch.cuda: " in detection.fallback_reason or "CPU-only build" in detection.fallback_reason
    assert detection.torch_version  # torch is installed in this venv


def _run_detection(env: dict[str, str]) -> dict[str, Any]:
    code = (
        "import json, sys; from actors.gpu.tiers import detect_gpus; d = detect_gpus(); "
        "print(json.dumps({'reason': d.fallback_reason, 'torch': 'torch' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _mapped_library(stem: str) -> str:
    """The file behind ``<stem>.so.1`` once loaded, wherever this distribution keeps it."""
    ctypes.CDLL(f"{stem}.so.1")
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if Path(path).name.startswith(f"{stem}.so"):
            return path
    raise AssertionError(f"{stem}.so.1 loaded but not found in /proc/self/maps")


def test_detection_never_imports_torch() -> None:
    assert _run_detection(dict(os.environ))["torch"] is False


def test_broken_nvml_library_gives_its_reason(tmp_path: Path) -> None:
    """A libnvidia-ml.so.1 that loads but is not NVML (here: zlib) makes nvmlInit raise."""
    (tmp_path / "libnvidia-ml.so.1").symlink_to(_mapped_library("libz"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
    result = _run_detection(env)
    assert result["reason"] == (
        "NVML: libnvidia-ml.so.1 has no nvmlInitWithFlags (a broken or incompatible driver library)"
    )


def test_unloadable_nvml_library_reads_as_not_found(tmp_path: Path) -> None:
    (tmp_path / "libnvidia-ml.so.1").write_bytes(b"not an ELF file")
    result = _run_detection({**os.environ, "LD_LIBRARY_PATH": str(tmp_path)})
    assert result["reason"] == "NVML: libnvidia-ml.so.1 not found (no NVIDIA driver installed)"


# ---------------------------------------------------------------- resolution


def published(name: str, free_mb: int | None = None) -> GpuDetection:
    """A detection record of one real card, from its published numbers (no GPU answers here)."""
    row = next(r for r in REAL_GPUS if r[0] == name)
    gpu = GpuInfo(0, f"NVIDIA {name}", row[2], row[2] if free_mb is None else free_mb, row[3], "GPU-0", 0)
    return GpuDetection((gpu,), "", "nvml", "580.65", "13.0", "2.11.0+cu130", "13.0", (7, 5))


def test_auto_profile_takes_the_detected_tier() -> None:
    resolved = resolve_gpu_config(load_settings(env={}), published("L4"))
    assert resolved.tier is MID and resolved.detected_tier is MID
    assert resolved.config == TIER_CONFIGS[MID]
    assert set(resolved.sources.values()) == {"tier Mid-Range"}


@pytest.mark.parametrize(
    ("profile", "tier"), [("high_performance", HIGH), ("balanced", MID), ("modest", MODEST), ("auto", HIGH)]
)
def test_profiles_force_a_tier_s_values(profile: str, tier: Tier) -> None:
    env = {"SKALD_GPU_PROFILE": profile}
    resolved = resolve_gpu_config(load_settings(env=env), published("H100 80GB"), setting_origins(env=env))
    assert resolved.tier is tier and resolved.detected_tier is HIGH
    assert resolved.config.parallel_streams == TIER_CONFIGS[tier].parallel_streams
    assert resolved.profile == profile


def test_forcing_a_bigger_tier_on_a_small_card_caps_the_vram_limit() -> None:
    env = {"SKALD_GPU_PROFILE": "high_performance"}
    resolved = resolve_gpu_config(load_settings(env=env), published("RTX 4060"), setting_origins(env=env))
    assert resolved.tier is HIGH and resolved.detected_tier is MODEST
    assert resolved.config.vram_limit_mb == int(8188 * 0.9)
    assert any("forces High-End values on a Modest GPU" in n for n in resolved.notes)
    assert any("capped at 7369 MiB" in n for n in resolved.notes)


def test_a_profile_cannot_conjure_a_gpu() -> None:
    settings = load_settings(env={"SKALD_GPU_PROFILE": "high_performance"})
    resolved = resolve_gpu_config(settings, detect_gpus())
    assert resolved.tier is CPU
    assert resolved.config.vram_limit_mb == 0
    assert any(n.startswith("profile high_performance ignored: no usable GPU (NVML: ") for n in resolved.notes)


def test_precedence_cli_over_env_over_file_over_tier(tmp_path: Path) -> None:
    cfg = tmp_path / "skald.toml"
    cfg.write_text("[gpu]\nvram_limit_gb = 4.0\nprebuffer_s = 1.5\nutil_target_high = 70.0\n")
    env = {"SKALD_VRAM_LIMIT_GB": "5", "SKALD_GPU_PREBUFFER_S": "2.5"}
    cli = {"gpu.vram_limit_gb": 6.0}
    gpu = published("RTX 4090")

    def resolve(file: Path | None, env: dict[str, str], cli: dict[str, float]) -> ResolvedGpuConfig:
        settings = load_settings(file, env=env, overrides=cli)
        return resolve_gpu_config(settings, gpu, setting_origins(file, env, cli))

    every = resolve(cfg, env, cli)
    assert every.config.vram_limit_mb == 6144 and every.sources["vram_limit_mb"] == "command line"
    assert every.config.prebuffer_s == 2.5 and every.sources["prebuffer_s"] == "SKALD_GPU_PREBUFFER_S"
    assert every.config.util_high_pct == 70.0 and every.sources["util_high_pct"] == str(cfg)
    assert every.config.util_low_pct == 60.0 and every.sources["util_low_pct"] == "tier Mid-Range"

    no_cli = resolve(cfg, env, {})
    assert no_cli.config.vram_limit_mb == 5120 and no_cli.sources["vram_limit_mb"] == "SKALD_VRAM_LIMIT_GB"
    file_only = resolve(cfg, {}, {})
    assert file_only.config.vram_limit_mb == 4096 and file_only.sources["vram_limit_mb"] == str(cfg)
    assert file_only.config.prebuffer_s == 1.5
    tier_only = resolve(None, {}, {})
    assert tier_only.config == TIER_CONFIGS[MID]


def test_parallel_streams_is_one_knob_under_two_names() -> None:
    gpu = published("H100 80GB")
    for env in ({"SKALD_PARALLEL_STREAMS": "1"}, {"SKALD_TTS_PARALLEL_STREAMS": "1"}):
        resolved = resolve_gpu_config(load_settings(env=env), gpu, setting_origins(env=env))
        assert resolved.config.parallel_streams == 1
        assert resolved.sources["parallel_streams"] == next(iter(env))
    with pytest.raises(ConfigError, match=r"both set tts\.parallel_streams; use one"):
        load_settings(env={"SKALD_PARALLEL_STREAMS": "1", "SKALD_TTS_PARALLEL_STREAMS": "2"})
    same = {"SKALD_PARALLEL_STREAMS": "2", "SKALD_TTS_PARALLEL_STREAMS": "2"}
    assert load_settings(env=same).tts.parallel_streams == 2


def test_cpu_tier_prebuffer_is_prebuffer_start_s_unless_gpu_prebuffer_is_set() -> None:
    env = {"SKALD_PREBUFFER_START_S": "0.3"}
    resolved = resolve_gpu_config(load_settings(env=env), detect_gpus(), setting_origins(env=env))
    assert resolved.config.prebuffer_s == 0.3
    assert resolved.sources["prebuffer_s"] == "prebuffer.start_s (SKALD_PREBUFFER_START_S)"
    env = {"SKALD_PREBUFFER_S": "1.25"}
    resolved = resolve_gpu_config(load_settings(env=env), detect_gpus(), setting_origins(env=env))
    assert resolved.config.prebuffer_s == 1.25 and resolved.sources["prebuffer_s"] == "SKALD_PREBUFFER_S"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SKALD_GPU_PROFILE": "turbo"},
            "gpu.profile = 'turbo' (from SKALD_GPU_PROFILE): must be one of: auto, high_performance, balanced, modest",
        ),
        (
            {"SKALD_VRAM_LIMIT_GB": "-4"},
            "gpu.vram_limit_gb = -4.0 (from SKALD_VRAM_LIMIT_GB): must be between -1 and 1024",
        ),
        (
            {"SKALD_PARALLEL_STREAMS": "5"},
            "tts.parallel_streams = 5 (from SKALD_PARALLEL_STREAMS): must be between -1 and 3",
        ),
        ({"SKALD_PREBUFFER_S": "soon"}, "gpu.prebuffer_s = 'soon' (from SKALD_PREBUFFER_S): must be a number"),
        ({"SKALD_GPU_UTIL_TARGET_HIGH": "101"}, "gpu.util_target_high = 101.0 (from SKALD_GPU_UTIL_TARGET_HIGH)"),
    ],
)
def test_bad_values_fail_at_load_naming_key_value_origin_and_range(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert message in str(info.value)


def test_five_streams_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"tts\.parallel_streams = 5 \(from command line\): must be between -1 and 3"):
        load_settings(env={}, overrides={"tts.parallel_streams": 5})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SKALD_VRAM_LIMIT_GB": "-0.5"},
            "gpu.vram_limit_gb = -0.5 (from SKALD_VRAM_LIMIT_GB): "
            "must be -1 (from the tier) or between 0.1 and 1024 GB",
        ),
        (
            {"SKALD_VRAM_LIMIT_GB": "0"},
            "gpu.vram_limit_gb = 0.0 (from SKALD_VRAM_LIMIT_GB): must be -1 (from the tier) or between 0.1 and 1024 GB",
        ),
        (
            {"SKALD_GPU_UTIL_TARGET_LOW": "85"},
            "gpu.util_target_low = 85.0 (from SKALD_GPU_UTIL_TARGET_LOW): the band must satisfy low < high "
            "(got 85 - 80 %)",
        ),
        (
            {"SKALD_PREBUFFER_S": "0.2", "SKALD_PREBUFFER_LOW_WATER_S": "0.25", "SKALD_PREBUFFER_START_S": "0.4"},
            "gpu.prebuffer_s = 0.2 (from SKALD_PREBUFFER_S): must be above prebuffer.low_water_s (0.25)",
        ),
    ],
)
def test_bad_values_fail_at_resolution_naming_key_value_origin_and_range(env: dict[str, str], message: str) -> None:
    settings = load_settings(env=env)
    with pytest.raises(ConfigError) as info:
        resolve_gpu_config(settings, published("L4"), setting_origins(env=env))
    assert message in str(info.value)


def test_worker_confirmation_through_torch_overrules_nvml() -> None:
    """NVML saw an L4 (the supervisor's view) but torch cannot reach CUDA here: the worker goes CPU."""
    settings = load_settings(env={})
    supervisor_view = resolve_gpu_config(settings, published("L4"))
    assert supervisor_view.tier is MID
    worker_view = confirm_with_torch(settings, supervisor_view)
    assert worker_view.tier is CPU
    assert worker_view.fallback_reason and "torch.cuda: " in worker_view.fallback_reason
    assert any(n.startswith("torch.cuda gives tier CPU where NVML gave Mid-Range: ") for n in worker_view.notes)


def test_resolved_config_round_trips_for_the_actors() -> None:
    env = {"SKALD_GPU_PROFILE": "modest", "SKALD_PREBUFFER_S": "2.5"}
    resolved = resolve_gpu_config(load_settings(env=env), published("RTX 4090"), setting_origins(env=env))
    data = json.loads(json.dumps(resolved.to_dict()))
    assert ResolvedGpuConfig.from_dict(data) == resolved
    cpu = resolve_gpu_config(load_settings(env={}), detect_gpus())
    assert ResolvedGpuConfig.from_dict(json.loads(json.dumps(cpu.to_dict()))) == cpu


def test_chunk_bias_scales_targets_inside_hard_bounds() -> None:
    settings = load_settings(env={})
    assert biased_chunk_targets(settings, 1.0) == (3.0, 7.0)
    lo, hi = biased_chunk_targets(settings, 0.8)
    assert (lo, hi) == pytest.approx((2.4, 5.6))
    assert biased_chunk_targets(settings, 0.5) == (2.4, 3.5)  # target_min stops at hard_min_s
    assert biased_chunk_targets(settings, 1.5) == (4.5, 8.0)  # target_max stops at hard_max_s


# ---------------------------------------------------------------- skald gpu


def test_gpu_command_json_here() -> None:
    out = io.StringIO()
    assert gpu_command(load_settings(env={}), True, out=out) == 0
    report = json.loads(out.getvalue())
    assert {"gpus", "tier", "config", "fallback_reason"} <= set(report)
    assert report["gpus"] == [] and report["tier"] == "CPU"
    assert report["fallback_reason"].startswith("NVML: ")
    assert report["config"]["parallel_streams"] == 0 and report["config"]["prebuffer_s"] == 0.5


def test_gpu_command_text_here() -> None:
    out = io.StringIO()
    assert gpu_command(load_settings(env={}), False, out=out) == 0
    text = out.getvalue()
    assert "CPU fallback: NVML: libnvidia-ml.so.1 not found" in text
    assert "profile: auto -> CPU values" in text
    assert "prebuffer_s" in text and "prebuffer.start_s" in text


def test_gpu_command_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(env={"SKALD_VRAM_LIMIT_GB": "-0.5"})
    assert gpu_command(settings, True, origins={"gpu.vram_limit_gb": "SKALD_VRAM_LIMIT_GB"}) == 2
    assert "gpu.vram_limit_gb = -0.5 (from SKALD_VRAM_LIMIT_GB)" in capsys.readouterr().err


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``skald gpu`` through add_gpu_parser in a real interpreter (the supervisor wires it later)."""
    code = (
        "import argparse, sys\n"
        "from actors.cli.gpu import add_gpu_parser\n"
        "parser = argparse.ArgumentParser(prog='skald')\n"
        "parser.add_argument('--config')\n"
        "add_gpu_parser(parser.add_subparsers(dest='command', required=True))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "rc = args.func(args)\n"
        "assert 'torch' not in sys.modules, 'skald gpu imported torch'\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_skald_gpu_json_subprocess() -> None:
    done = _cli("gpu", "--json", "--gpu-profile", "modest", "--prebuffer-s", "1.5")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tier"] == "CPU" and report["profile"] == "modest"
    assert report["config"]["prebuffer_s"] == 1.5 and report["sources"]["prebuffer_s"] == "command line"
    assert report["fallback_reason"]


def test_skald_gpu_rejects_five_streams() -> None:
    done = _cli("gpu", "--parallel-streams", "5")
    assert done.returncode == 2
    assert "tts.parallel_streams = 5 (from command line): must be between -1 and 3" in done.stderr


def test_add_gpu_parser_registers_the_subcommand() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    gpu = add_gpu_parser(sub)
    args = parser.parse_args(["gpu", "--json", "--vram-limit-gb", "3"])
    assert args.command == "gpu" and args.json and args.vram_limit_gb == 3.0
    assert gpu.prog.endswith("gpu")


def test_gpu_benchmark_refuses_to_run_without_a_gpu() -> None:
    """scripts/bench gpu prints no numbers on a CPU-only machine: it says why and what the CPU tier is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    done = subprocess.run(
        [sys.executable, "scripts/bench.py", "gpu", "--json", "/nonexistent/never-written.json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no CUDA GPU: this benchmark needs one (NVML: " in done.stderr
    cpu_config = json.loads(done.stderr.split("CPU tier config is: ", 1)[1])
    assert cpu_config["tier"] == "CPU" and cpu_config["vram_limit_mb"] == 0


def test_cuda_visible_devices_is_applied_to_nvml_s_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.gpu.detect import _visible

    gpus = [
        GpuInfo(0, "NVIDIA L4", 23034, 23000, (8, 9), "GPU-aaaa-1111", 0),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", 81559, 81000, (9, 0), "GPU-bbbb-2222", 1),
    ]
    notes: list[str] = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    visible, reason = _visible(gpus, notes)
    assert reason == "" and [(g.index, g.nvml_index, g.name) for g in visible] == [
        (0, 1, "NVIDIA H100 80GB HBM3"),
        (1, 0, "NVIDIA L4"),
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert [g.nvml_index for g in _visible(gpus, notes)[0]] == [1]
    for hidden in ("", "-1", "7"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert _visible(gpus, notes) == ([], f"CUDA_VISIBLE_DEVICES={hidden!r} leaves no GPU visible")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _visible(gpus, notes)[0] == gpus
    assert any("CUDA_DEVICE_ORDER" in n for n in notes)  # two different cards, order not pinned
