"""The GPU modules' edges that a machine without a GPU never reaches on its own: NVML and
``torch.cuda`` answering (a card found, a MIG card, a failed memory query, a driver error of each
kind), torch's build read from its files, tier edges and bad tier values, and the VRAM and
utilization controllers' remaining paths (``actors/gpu/detect.py``, ``tiers.py``, ``control.py``).

``pynvml`` and ``torch`` are replaced in ``sys.modules`` by the doubles of
``tests/support/gpu_stack_doubles.py`` (nothing here can load a real driver); everything that
reads them is the production code. ``tests/test_gpu.py`` runs detection against the real,
absent driver.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

import actors.gpu.control as control
from actors.gpu.control import UtilizationController, UtilizationPolicy, VramManager
from actors.gpu.detect import GpuDetection, GpuInfo, detect_gpus
from actors.gpu.tiers import (
    TIER_CONFIGS,
    Tier,
    TierConfig,
    classify_tier,
    confirm_with_torch,
    resolve_gpu_config,
    tier_of,
)
from config.settings import ConfigError, load_settings
from tests.support.gpu_doubles import RecordedGpuSampler, ScriptedCudaMemory
from tests.support.gpu_stack_doubles import FakeCudaDevice, FakeNvmlCard, fake_pynvml, fake_torch

L4 = FakeNvmlCard("NVIDIA L4", 23034, 22500, (8, 9), "GPU-aaaa-1111")
H100 = FakeNvmlCard("NVIDIA H100 80GB HBM3", 81559, 80000, (9, 0), "GPU-bbbb-2222", mig=True)


@pytest.fixture
def gpu_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CUDA_* variable of the machine's leaks into what detection sees."""
    for var in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def with_nvml(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    mod = fake_pynvml(**kwargs)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return mod


def without_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torch not installed: not imported, and not on the (emptied) import path."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])


# ---------------------------------------------------------------- NVML answering


def test_nvml_lists_every_card_with_its_memory_capability_and_uuid(gpu_env: pytest.MonkeyPatch) -> None:
    nvml = with_nvml(gpu_env, cards=[L4, H100])
    d = detect_gpus()
    assert d.usable and d.via == "nvml" and d.fallback_reason == "" and d.count == 2
    assert [(g.index, g.nvml_index, g.name, g.vram_total_mb, g.vram_free_mb, g.compute_capability) for g in d.gpus] == [
        (0, 0, "NVIDIA L4", 23034, 22500, (8, 9)),
        (1, 1, "NVIDIA H100 80GB HBM3", 81559, 80000, (9, 0)),
    ]
    assert d.gpus[1].uuid == "GPU-bbbb-2222"  # NVML's bytes decoded
    assert d.driver_version == "580.65.06" and d.cuda_driver_version == "12.8"
    # The H100 is in MIG mode: CUDA will see an instance, smaller than the card.
    assert any(n.startswith("GPU 1 (NVIDIA H100 80GB HBM3) is in MIG mode") for n in d.notes)
    assert not any("GPU 0" in n and "MIG" in n for n in d.notes)
    # Two different cards and no CUDA_DEVICE_ORDER: cuda:0 may not be NVML's GPU 0.
    assert any("CUDA_DEVICE_ORDER" in n for n in d.notes)
    assert nvml.calls == ["init", "shutdown"]
    assert tier_of(d).tier is Tier.MID_RANGE  # cuda:0 is the L4


def test_identical_cards_or_a_pinned_order_need_no_device_order_note(gpu_env: pytest.MonkeyPatch) -> None:
    twin = dataclasses.replace(L4, uuid="GPU-cccc-3333", mig=False)  # MIG-capable, MIG off: no note either
    with_nvml(gpu_env, cards=[L4, twin])
    assert detect_gpus().notes == ()
    with_nvml(gpu_env, cards=[L4, H100])
    gpu_env.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert not any("CUDA_DEVICE_ORDER" in n for n in detect_gpus().notes)


def test_a_card_without_a_memory_size_is_listed_and_classed_cpu(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[dataclasses.replace(L4, memory_error=True)], cuda_driver_version=None)
    d = detect_gpus()
    assert d.gpus[0].vram_total_mb == 0 and d.gpus[0].vram_free_mb == 0
    assert d.cuda_driver_version == ""  # the driver could not say: left blank, not guessed
    assert any(n.startswith("NVML: GPU 0 (NVIDIA L4) reports no memory size: ") for n in d.notes)
    verdict = tier_of(d)
    assert verdict.tier is Tier.CPU and verdict.reason == "GPU 0 (NVIDIA L4) reports no memory size"


def test_a_driver_with_no_gpu_says_so(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[])
    d = detect_gpus()
    assert not d.usable and d.fallback_reason == "NVML: the driver is loaded but reports no GPU"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("NVMLError_LibraryNotFound", "NVML: libnvidia-ml.so.1 not found (no NVIDIA driver installed)"),
        ("NVMLError_DriverNotLoaded", "NVML: the NVIDIA kernel driver is not loaded"),
        (
            "NVMLError_FunctionNotFound",
            "NVML: libnvidia-ml.so.1 has no nvmlInitWithFlags (a broken or incompatible driver library)",
        ),
        ("NVMLError_NoPermission", "NVML: no permission to query the GPU (nvmlInitWithFlags)"),
        ("NVMLError_Unknown", "NVML: nvmlInitWithFlags failed: scripted NVMLError_Unknown (NVMLError_Unknown)"),
    ],
)
def test_each_nvml_init_failure_has_its_own_reason(gpu_env: pytest.MonkeyPatch, error: str, reason: str) -> None:
    nvml = with_nvml(gpu_env, cards=[L4], init_error=error)
    d = detect_gpus()
    assert not d.usable and d.gpus == () and d.via == ""
    assert d.fallback_reason == reason
    assert nvml.calls == ["init"]  # nothing to shut down after a failed init


def test_a_query_failing_after_init_is_the_reason_and_nvml_is_still_shut_down(gpu_env: pytest.MonkeyPatch) -> None:
    nvml = with_nvml(gpu_env, cards=[L4], query_error="NVMLError_NoPermission", shutdown_error=True)
    d = detect_gpus()
    assert d.fallback_reason == "NVML: no permission to query the GPU (querying the GPUs)"
    assert nvml.calls == ["init", "shutdown"]  # the failing shutdown is not raised either


def test_without_nvidia_ml_py_the_reason_names_the_extra(gpu_env: pytest.MonkeyPatch) -> None:
    gpu_env.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    d = detect_gpus()
    assert d.fallback_reason == "NVML: nvidia-ml-py is not installed (it comes with the xtts extra)"


def test_cuda_visible_devices_naming_a_mig_instance_keeps_the_whole_card(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[H100])
    gpu_env.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234abcd")
    d = detect_gpus()
    assert d.usable and [g.name for g in d.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert any(n.startswith("CUDA_VISIBLE_DEVICES names a MIG instance (MIG-1234abcd)") for n in d.notes)


def test_cuda_visible_devices_hiding_every_card_is_the_fallback_reason(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[L4])
    gpu_env.setenv("CUDA_VISIBLE_DEVICES", "-1")
    d = detect_gpus()
    assert not d.usable and d.fallback_reason == "CUDA_VISIBLE_DEVICES='-1' leaves no GPU visible"


# ---------------------------------------------------------------- torch's build, read without importing it


def _torch_package(root: Path, version_py: str | None) -> None:
    pkg = root / "torch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise AssertionError('detect_gpus() must not import torch')\n")
    if version_py is not None:
        (pkg / "version.py").write_text(version_py)


@pytest.mark.parametrize(
    ("version_py", "torch_version", "torch_cuda", "min_cc", "reason"),
    [
        # An official CUDA 12.6 wheel: kernels back to Maxwell.
        ("__version__ = '2.11.0+cu126'\ncuda: Optional[str] = '12.6'\n", "2.11.0+cu126", "12.6", (5, 0), ""),
        # A CPU-only build: NVML sees the card, XTTS cannot use it.
        (
            "__version__ = '2.11.0+cpu'\ncuda: Optional[str] = None\n",
            "2.11.0+cpu",
            "",
            (7, 5),
            "torch 2.11.0+cpu is a CPU-only build: XTTS cannot use the GPU",
        ),
        # A version.py without a version line still counts as installed.
        ("cuda = '12.8'\n", "?", "12.8", (5, 0), ""),
    ],
)
def test_the_supervisor_reads_torch_s_build_from_its_version_file(
    gpu_env: pytest.MonkeyPatch,
    tmp_path: Path,
    version_py: str,
    torch_version: str,
    torch_cuda: str,
    min_cc: tuple[int, int],
    reason: str,
) -> None:
    with_nvml(gpu_env, cards=[L4])
    without_torch(gpu_env, tmp_path)
    _torch_package(tmp_path, version_py)
    d = detect_gpus()
    assert (d.torch_version, d.torch_cuda, d.min_compute_capability) == (torch_version, torch_cuda, min_cc)
    assert d.fallback_reason == reason
    assert "torch" not in sys.modules


def _assert_torch_counts_as_missing(d: GpuDetection) -> None:
    assert d.usable and d.torch_version == "" and d.min_compute_capability == (7, 5)
    assert "torch is not installed (the xtts extra): tier assumes its pinned build (CC >= 7.5)" in d.notes


def test_no_torch_on_the_path_assumes_the_pinned_build(gpu_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_nvml(gpu_env, cards=[L4])
    without_torch(gpu_env, tmp_path)
    _assert_torch_counts_as_missing(detect_gpus())


def test_a_torch_directory_that_is_not_a_package_counts_as_missing(gpu_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_nvml(gpu_env, cards=[L4])
    without_torch(gpu_env, tmp_path)
    (tmp_path / "torch").mkdir()  # a namespace package: no origin file to read beside
    _assert_torch_counts_as_missing(detect_gpus())


def test_a_torch_package_without_version_py_counts_as_missing(gpu_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_nvml(gpu_env, cards=[L4])
    without_torch(gpu_env, tmp_path)
    _torch_package(tmp_path, None)
    _assert_torch_counts_as_missing(detect_gpus())


class _BrokenFinder:
    """An import hook (as a .pth file may install) that fails every lookup of torch."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch":
            raise ImportError("import hook failed")
        return None


def test_a_failing_import_hook_counts_as_torch_missing(gpu_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_nvml(gpu_env, cards=[L4])
    without_torch(gpu_env, tmp_path)
    gpu_env.setattr(sys, "meta_path", [_BrokenFinder(), *sys.meta_path])
    _assert_torch_counts_as_missing(detect_gpus())


def test_an_imported_torch_is_asked_directly(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[L4])
    gpu_env.setitem(sys.modules, "torch", fake_torch(version="2.9.1+cu128", cuda="12.8"))
    d = detect_gpus()
    assert (d.torch_version, d.torch_cuda, d.min_compute_capability) == ("2.9.1+cu128", "12.8", (7, 0))


# ---------------------------------------------------------------- torch.cuda answering (the worker's check)


def test_torch_cuda_confirms_the_cards_and_pairs_them_with_nvml_by_uuid(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[L4, H100])
    # CUDA numbers the fastest first: cuda:0 is NVML's GPU 1. torch reports UUIDs without "GPU-".
    torch = fake_torch(
        [
            FakeCudaDevice("NVIDIA H100 80GB HBM3", 81559, (9, 0), uuid="bbbb-2222", free_mib=79000),
            FakeCudaDevice("NVIDIA L4", 23034, (8, 9), uuid="aaaa-1111"),
        ],
        archs=("sm_80", "sm_90a", "compute_90"),
    )
    gpu_env.setitem(sys.modules, "torch", torch)
    d = detect_gpus(use_torch=True)
    assert d.usable and d.via == "nvml+torch" and d.min_compute_capability == (8, 0)
    assert [(g.index, g.nvml_index, g.uuid, g.vram_free_mb) for g in d.gpus] == [
        (0, 1, "GPU-bbbb-2222", 79000),  # cuda:0's free memory from torch itself
        (1, 0, "GPU-aaaa-1111", 22500),  # the others' from NVML: no CUDA context made on them
    ]
    assert torch.cuda.calls == ["init", "mem_get_info(0)"]


def test_torch_without_uuids_pairs_by_position_only_when_the_counts_agree(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[L4, H100])
    two = [FakeCudaDevice("NVIDIA L4", 23034, (8, 9), free_mib=22000), FakeCudaDevice("NVIDIA H100", 81559, (9, 0))]
    gpu_env.setitem(sys.modules, "torch", fake_torch(two))
    assert [(g.nvml_index, g.uuid) for g in detect_gpus(use_torch=True).gpus] == [
        (0, "GPU-aaaa-1111"),
        (1, "GPU-bbbb-2222"),
    ]
    # One CUDA device (e.g. a container's) for two NVML cards: no guess, no NVML index.
    gpu_env.setitem(sys.modules, "torch", fake_torch(two[1:]))
    [only] = detect_gpus(use_torch=True).gpus
    assert (only.nvml_index, only.uuid, only.name) == (-1, "", "NVIDIA H100")


def test_torch_alone_finds_the_gpu_when_nvml_cannot(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, init_error="NVMLError_LibraryNotFound")
    gpu_env.setitem(sys.modules, "torch", fake_torch([FakeCudaDevice("NVIDIA L4", 23034, (8, 9), free_mib=1000)]))
    d = detect_gpus(use_torch=True)
    assert d.usable and d.via == "torch" and d.gpus[0].nvml_index == -1
    assert any(n.endswith(": no utilization or per-process memory sampling") for n in d.notes)


@pytest.mark.parametrize(
    ("torch_kwargs", "reason"),
    [
        ({"cuda": None, "version": "2.11.0+cpu"}, "torch 2.11.0+cpu is a CPU-only build: XTTS cannot use the GPU"),
        (
            {"init_error": RuntimeError("The NVIDIA driver on your system is too old (found version 11040).\nmore")},
            "torch.cuda: The NVIDIA driver on your system is too old (found version 11040).",
        ),
        ({"init_error": RuntimeError()}, "torch.cuda: RuntimeError"),
        ({}, "torch.cuda: no CUDA device visible"),
    ],
)
def test_torch_s_own_reason_when_it_cannot_use_cuda(
    gpu_env: pytest.MonkeyPatch, torch_kwargs: dict[str, Any], reason: str
) -> None:
    with_nvml(gpu_env, cards=[L4])
    gpu_env.setitem(sys.modules, "torch", fake_torch(**torch_kwargs))
    d = detect_gpus(use_torch=True)
    assert not d.usable and d.fallback_reason == reason and d.via == "nvml"


def test_without_torch_the_worker_s_check_says_so(gpu_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_nvml(gpu_env, cards=[L4])
    without_torch(gpu_env, tmp_path)
    d = detect_gpus(use_torch=True)
    assert d.fallback_reason == "torch: not installed (it comes with the xtts extra)"


# ---------------------------------------------------------------- tiers: names, edges, bad values


def test_tiers_are_found_by_value_or_name_and_an_unknown_name_is_refused() -> None:
    assert Tier.from_name("Mid-Range") is Tier.from_name("MID_RANGE") is Tier.MID_RANGE
    with pytest.raises(ValueError, match=r"unknown tier 'Huge'; tiers: High-End, Mid-Range, Modest, Low-End, CPU"):
        Tier.from_name("Huge")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parallel_streams": 4}, "TierConfig.parallel_streams=4: must be 0-3"),
        ({"parallel_streams": -1}, "TierConfig.parallel_streams=-1: must be 0-3"),
        ({"vram_limit_mb": -1}, "TierConfig.vram_limit_mb=-1: must be >= 0"),
        ({"util_low_pct": 80.0, "util_high_pct": 80.0}, "TierConfig util band 80.0-80.0: need 0 <= low < high <= 100"),
        ({"util_high_pct": 101.0}, "TierConfig util band 70.0-101.0: need 0 <= low < high <= 100"),
        ({"prebuffer_s": 31.0}, "TierConfig.prebuffer_s=31.0: must be 0-30"),
        ({"chunk_bias": 0.2}, "TierConfig.chunk_bias=0.2: must be 0.25-2"),
        ({"chunk_bias": 2.5}, "TierConfig.chunk_bias=2.5: must be 0.25-2"),
        ({"yield_max_ms": -5.0}, "TierConfig.yield_max_ms=-5.0: must be >= 0"),
    ],
)
def test_a_tier_config_refuses_values_outside_its_ranges(change: dict[str, Any], message: str) -> None:
    base = dataclasses.replace(TIER_CONFIGS[Tier.MID_RANGE], util_low_pct=70.0, util_high_pct=90.0)
    with pytest.raises(ValueError) as info:
        dataclasses.replace(base, **change)
    assert str(info.value) == message


def test_a_tier_config_takes_its_range_edges() -> None:
    edge = TierConfig(Tier.LOW_END, 0, 0, 0.0, 100.0, 30.0, 2.0, 0.0)
    assert edge.concurrency == 1 and edge.util_band == (0.0, 100.0)
    assert dataclasses.replace(edge, parallel_streams=3, chunk_bias=0.25).concurrency == 3


def test_the_low_end_floor_is_inclusive() -> None:
    assert classify_tier(3584, (7, 5)).tier is Tier.LOW_END
    assert classify_tier(3583, (7, 5)).tier is Tier.CPU


def _settings_in_code(**gpu: Any) -> Any:
    """Settings built in code (an embedding application), not loaded: load_settings' own checks
    never ran, so resolution must still refuse bad values by key."""
    settings = load_settings(env={})
    streams = gpu.pop("parallel_streams", None)
    if streams is not None:
        settings = dataclasses.replace(settings, tts=dataclasses.replace(settings.tts, parallel_streams=streams))
    return dataclasses.replace(settings, gpu=dataclasses.replace(settings.gpu, **gpu))


L4_DETECTION = GpuDetection((GpuInfo(0, "NVIDIA L4", 23034, 23000, (8, 9), "GPU-0", 0),), "", "nvml")


def test_resolution_refuses_a_profile_or_stream_count_that_skipped_loading() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_gpu_config(_settings_in_code(profile="turbo"), L4_DETECTION)
    assert str(info.value) == (
        "config error: gpu.profile = 'turbo': must be one of: auto, high_performance, balanced, modest"
    )
    with pytest.raises(ConfigError) as info:
        resolve_gpu_config(_settings_in_code(parallel_streams=5), L4_DETECTION, {"tts.parallel_streams": "my app"})
    assert str(info.value) == (
        "config error: tts.parallel_streams = 5 (from my app): must be -1 (from the tier) or between 0 and 3"
    )


def test_a_vram_limit_on_the_cpu_tier_is_ignored_with_a_note() -> None:
    settings = load_settings(env={"SKALD_VRAM_LIMIT_GB": "4"})
    resolved = resolve_gpu_config(settings, GpuDetection(fallback_reason="no GPU here"))
    assert resolved.tier is Tier.CPU and resolved.config.vram_limit_mb == 0
    assert "gpu.vram_limit_gb ignored on the CPU tier" in resolved.notes


def test_a_worker_that_agrees_with_the_supervisor_adds_no_note(gpu_env: pytest.MonkeyPatch) -> None:
    with_nvml(gpu_env, cards=[L4])
    gpu_env.setitem(sys.modules, "torch", fake_torch([FakeCudaDevice("NVIDIA L4", 23034, (8, 9), free_mib=22000)]))
    settings = load_settings(env={"SKALD_PARALLEL_STREAMS": "1"})
    origins = {"tts.parallel_streams": "SKALD_PARALLEL_STREAMS"}
    supervisor_view = resolve_gpu_config(settings, detect_gpus(), origins)
    worker_view = confirm_with_torch(settings, supervisor_view)
    assert worker_view.tier is supervisor_view.tier is Tier.MID_RANGE
    assert not any(n.startswith("torch.cuda gives tier") for n in worker_view.notes)
    assert worker_view.sources["parallel_streams"] == "SKALD_PARALLEL_STREAMS"  # the supervisor's origin kept
    assert worker_view.detection.via == "nvml+torch"


# ---------------------------------------------------------------- control: the remaining paths


def test_a_manager_without_memory_or_reason_says_why_it_is_inactive() -> None:
    vram = VramManager(TIER_CONFIGS[Tier.MID_RANGE], None)
    assert not vram.active and vram.reason == "no CUDA memory to manage"


def test_for_worker_on_a_gpu_tier_manages_torch_s_memory_and_logs_missing_nvml(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """torch.cuda reachable (its counters: the scripted double), NVML not: VRAM is managed,
    utilization is not sampled, and the log says why."""
    memory = ScriptedCudaMemory(total=23034.0)
    monkeypatch.setattr(control, "TorchCudaMemory", lambda device: memory)
    resolved = resolve_gpu_config(load_settings(env={}), L4_DETECTION)
    with caplog.at_level(logging.WARNING, logger=control.log.name):
        vram = VramManager.for_worker(resolved)
    assert vram.active and vram.reason == "" and vram.sampler is None
    assert any(r.getMessage().startswith("no NVML sampling of GPU 0: ") for r in caplog.records)
    fraction = vram.apply_limit()
    assert fraction == pytest.approx(resolved.config.vram_limit_mb / 23034.0) and memory.fraction == fraction


def test_a_gpu_found_by_torch_alone_has_no_utilization_sampling() -> None:
    """No NVML index (torch found the card, NVML did not): nothing to sample, no pauses."""
    torch_only = GpuDetection((GpuInfo(0, "NVIDIA L4", 23034, 23000, (8, 9), "GPU-0", -1),), "", "torch")
    resolved = resolve_gpu_config(load_settings(env={}), torch_only)
    util = UtilizationController.for_worker(resolved)
    assert resolved.on_gpu and not util.active
    assert util.reason == "NVML unavailable: utilization unknown, no pauses"
    assert util.decide(5.0).yield_ms == 0.0


def test_closing_the_controllers_closes_their_samplers() -> None:
    config = TIER_CONFIGS[Tier.MID_RANGE]
    vram_sampler, util_sampler = RecordedGpuSampler([50.0]), RecordedGpuSampler([50.0, 60.0])
    vram = VramManager(config, ScriptedCudaMemory(), sampler=vram_sampler)
    util = UtilizationController(config, util_sampler)
    vram.close()
    util.close()
    assert vram_sampler.sample() is None and util_sampler.sample() is None  # nothing left to play back


def test_a_utilization_band_must_be_a_band() -> None:
    with pytest.raises(ValueError, match=r"utilization band 90-60: need 0 <= low < high <= 100"):
        UtilizationPolicy((90, 60), max_streams=2, yield_max_ms=50.0, low_water_s=1.0)


def test_oom_recovery_cuts_a_cyclic_exception_chain_without_looping() -> None:
    vram = VramManager(TIER_CONFIGS[Tier.MID_RANGE], ScriptedCudaMemory())
    try:
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError as inner:
            raise RuntimeError("CUDA out of memory. while retrying") from inner
    except RuntimeError as caught:
        outer = caught
    inner_exc = outer.__cause__
    assert inner_exc is not None
    inner_exc.__context__ = outer  # a cycle, as a handler that re-raises its own context makes
    recovery = vram.recover_from_oom(outer)
    assert recovery is not None and recovery.oom_count == 1
    assert outer.__traceback__ is None and inner_exc.__traceback__ is None
