"""GPU control in the TTS worker (``actors/gpu_control.py``) on a machine without a GPU.

The logic lives in two pure state machines (``PressureGovernor``, ``UtilizationPolicy``), driven
here by sample sequences. The stand-ins are only at the missing-GPU boundary: ``RecordedGpuSampler``
(NVML readings) and ``ScriptedCudaMemory`` (torch.cuda's counters). The OOM path raises torch's
real ``OutOfMemoryError``.
"""

from __future__ import annotations

import pytest
import torch

from actors.gpu.control import (
    OomAttempt,
    PressureGovernor,
    RecordedGpuSampler,
    ScriptedCudaMemory,
    UtilizationController,
    UtilizationPolicy,
    VramManager,
    control_status,
    is_oom_error,
)
from actors.gpu.tiers import TIER_CONFIGS, GpuDetection, GpuInfo, Tier, TierConfig, detect_gpus, resolve_gpu_config
from config.settings import load_settings

HIGH, MID, MODEST, LOW = (TIER_CONFIGS[t] for t in (Tier.HIGH_END, Tier.MID_RANGE, Tier.MODEST, Tier.LOW_END))


# ---------------------------------------------------------------- VRAM pressure (pure)


def test_pressure_enters_at_90_percent_and_steps_down_parallelism_and_bias() -> None:
    gov = PressureGovernor(base_streams=3, base_bias=1.0)
    limit = 10_000.0
    seen = [gov.update(used, limit) for used in (5000, 8900, 9000, 9500, 9800, 9900)]
    assert [s.event for s in seen] == ["", "", "enter", "deeper", "deeper", ""]
    assert [s.max_streams for s in seen] == [3, 3, 2, 1, 1, 1]
    assert [s.chunk_bias for s in seen] == [1.0, 1.0, 0.8, 0.64, 0.512, 0.512]
    assert seen[-1].level == 3  # the deepest level holds


def test_pressure_leaves_only_after_sustained_calm_below_75_percent() -> None:
    gov = PressureGovernor(base_streams=3, base_bias=1.0, recover_checks=3)
    limit = 1000.0
    gov.update(950, limit)
    gov.update(950, limit)
    assert gov.level == 2
    # Between the thresholds nothing changes, and it breaks a calm streak.
    trace = [gov.update(used, limit) for used in (800, 700, 700, 800, 700, 700, 700, 700, 700, 700)]
    assert [s.event for s in trace] == ["", "", "", "", "", "", "step_up", "", "", "leave"]
    assert [s.max_streams for s in trace][-1] == 3 and trace[-1].chunk_bias == 1.0
    assert not trace[-1].under_pressure


def test_pressure_does_not_flap_around_one_threshold() -> None:
    gov = PressureGovernor(base_streams=2, base_bias=1.0)
    states = [gov.update(used, 100.0) for used in (91, 80, 89, 76, 88, 77, 85, 80)]
    assert [s.event for s in states] == ["enter", "", "", "", "", "", "", ""]
    assert all(s.level == 1 for s in states)


def test_oom_jumps_to_the_deepest_level_and_sequential_tiers_stay_at_one_stream() -> None:
    gov = PressureGovernor(base_streams=0, base_bias=0.8)
    assert gov.state().max_streams == 1
    state = gov.note_oom()
    assert state.event == "oom" and state.level == 3 and state.max_streams == 1 and state.chunk_bias == 0.5


def test_pressure_thresholds_must_make_a_band() -> None:
    with pytest.raises(ValueError, match="leave < enter"):
        PressureGovernor(3, 1.0, enter=0.7, leave=0.8)


# ---------------------------------------------------------------- utilization (pure)


def run(policy: UtilizationPolicy, steps: list[tuple[float | None, float]]) -> list[tuple[str, int, float]]:
    """(util %, ring fill s) readings in, (action, streams, pause ms) decisions out."""
    out = []
    for util, ring in steps:
        d = policy.step(util, ring)
        out.append((d.action, d.parallel_streams, d.yield_ms))
    return out


def test_too_hot_sheds_streams_first_then_pauses_up_to_the_cap() -> None:
    policy = UtilizationPolicy(MID.util_band, max_streams=3, yield_max_ms=250.0, low_water_s=1.0)
    trace = run(policy, [(99.0, 20.0)] * 14)
    actions = [a for a, _, _ in trace]
    assert actions[:5] == ["fewer_streams", "hold", "fewer_streams", "yield_more", "yield_more"]
    assert [s for _, s, _ in trace][:4] == [2, 2, 1, 1]
    yields = [y for _, _, y in trace]
    assert yields[:3] == [0.0, 0.0, 0.0] and yields[3] > 0
    assert yields == sorted(yields) and yields[-1] == 250.0  # grows to yield_max_ms, never past it


def test_pause_is_sized_from_the_duty_cycle_when_synthesis_time_is_known() -> None:
    policy = UtilizationPolicy(MODEST.util_band, max_streams=1, yield_max_ms=1000.0, low_water_s=2.0)
    d = policy.step(100.0, 10.0, synth_s=0.5)
    # util 100 % at a 0.5 s chunk with no pause -> 50 % (mid band) wants the pause = the chunk time
    assert d.action == "yield_more" and d.yield_ms == pytest.approx(500.0)


def test_the_buffer_wins_below_low_water() -> None:
    policy = UtilizationPolicy(MODEST.util_band, max_streams=2, yield_max_ms=1000.0, low_water_s=2.0)
    run(policy, [(100.0, 10.0)] * 6)
    assert policy.yield_ms > 0 and policy.streams == 1
    d = policy.step(100.0, 1.5)  # ring below 2.0 s: GPU hot or not, no pause and every stream
    assert (d.action, d.yield_ms, d.parallel_streams) == ("refill", 0.0, 2)


def test_a_pause_never_drains_the_ring_below_low_water() -> None:
    policy = UtilizationPolicy(LOW.util_band, max_streams=1, yield_max_ms=2000.0, low_water_s=3.0)
    for _ in range(20):
        policy.step(100.0, 30.0)
    assert policy.yield_ms == 2000.0
    d = policy.step(100.0, 3.25)
    assert d.yield_ms == pytest.approx(250.0)  # only the 0.25 s above low water


def test_too_cold_first_shortens_the_pause_then_adds_streams() -> None:
    policy = UtilizationPolicy(HIGH.util_band, max_streams=3, yield_max_ms=50.0, low_water_s=0.5)
    run(policy, [(100.0, 10.0)] * 14)
    assert policy.streams == 1 and policy.yield_ms == 50.0
    trace = run(policy, [(20.0, 10.0)] * 16)
    actions = [a for a, _, _ in trace]
    first_more = actions.index("more_streams")
    assert set(actions[:first_more]) <= {"yield_less", "hold"} and trace[first_more - 1][2] == 0.0
    assert trace[-1][1] == 3 and trace[-1][2] == 0.0


def test_inside_the_band_nothing_moves_and_pressure_caps_streams() -> None:
    policy = UtilizationPolicy(MID.util_band, max_streams=2, yield_max_ms=250.0, low_water_s=1.0)
    assert {a for a, _, _ in run(policy, [(70.0, 5.0)] * 5)} == {"hold"}
    d = policy.step(70.0, 5.0, streams_cap=1)
    assert d.parallel_streams == 1
    d = policy.step(None, 5.0)  # no new reading: the smoothed value stands
    assert d.util_pct == pytest.approx(70.0)


def test_no_reading_yet_still_honours_the_buffer() -> None:
    policy = UtilizationPolicy(MID.util_band, max_streams=2, yield_max_ms=250.0, low_water_s=1.0)
    assert policy.step(None, 5.0).action == "no_sample"
    assert policy.step(None, 0.2).action == "refill"


def test_controller_reads_its_sampler_and_reports_status() -> None:
    ctrl = UtilizationController(MID, RecordedGpuSampler([99.0, 99.0, None, 70.0]))
    actions = [ctrl.decide(8.0).action for _ in range(5)]
    assert actions[0] == "fewer_streams"
    status = ctrl.status()
    assert status["active"] and status["tier"] == "Mid-Range" and status["samples"] == 3
    assert status["util_band"] == [60.0, 80.0] and status["low_water_s"] == MID.prebuffer_s
    ctrl.close()


# ---------------------------------------------------------------- harmless on CPU


def test_on_the_cpu_tier_both_are_inactive_with_the_reason() -> None:
    resolved = resolve_gpu_config(load_settings(env={}), detect_gpus())
    vram = VramManager.for_worker(resolved)
    util = UtilizationController.for_worker(resolved)
    assert not vram.active and vram.reason.startswith("CPU tier: NVML: ")
    assert not util.active and util.reason == vram.reason
    assert vram.apply_limit() is None
    assert vram.check().max_streams == 1
    vram.release("cancel")
    assert vram.run_with_oom_recovery(lambda a: a.number).value == 1
    d = util.decide(0.1)
    assert (d.action, d.yield_ms, d.parallel_streams) == ("inactive", 0.0, 1)
    status = control_status(resolved, vram, util)
    assert status["tier"] == "CPU" and status["fallback_reason"].startswith("NVML: ")
    assert status["vram"]["active"] is False and status["util"]["active"] is False
    vram.close()
    util.close()


def test_a_gpu_tier_without_cuda_in_torch_is_inactive_not_broken() -> None:
    l4 = GpuInfo(0, "NVIDIA L4", 23034, 22000, (8, 9), "GPU-0", 0)
    resolved = resolve_gpu_config(load_settings(env={}), GpuDetection((l4,), via="nvml"))
    assert resolved.tier is Tier.MID_RANGE
    vram = VramManager.for_worker(resolved)  # torch is installed here but finds no driver
    assert not vram.active and vram.reason == "torch.cuda unusable: torch.cuda is not available"
    util = UtilizationController.for_worker(resolved)  # NVML is missing here
    assert not util.active and "NVML unavailable" in util.reason
    assert util.decide(5.0).parallel_streams == 2


# ---------------------------------------------------------------- VramManager on torch.cuda's counters


def manager(config: TierConfig = MID, total: float = 24576.0) -> tuple[VramManager, ScriptedCudaMemory]:
    memory = ScriptedCudaMemory(total=total)
    return VramManager(config, memory), memory


def test_limit_is_applied_as_a_fraction_of_the_card() -> None:
    vram, memory = manager(MID, total=24576.0)
    assert vram.apply_limit() == pytest.approx(6144 / 24576)
    assert memory.fraction == pytest.approx(0.25)
    assert vram.apply_limit(12288) == pytest.approx(0.5) and vram.limit_mb == 12288


def test_check_uses_each_chunk_s_peak_and_clears_the_cache_under_pressure() -> None:
    vram, memory = manager(MID)
    memory.allocate(2000)  # weights
    memory.allocate(3000)  # a chunk's activations...
    memory.free(3000)  # ...gone by the time we look: the peak still tells
    state = vram.check()
    assert state.event == "" and state.ratio == pytest.approx(5000 / 6144)
    memory.allocate(3600)
    memory.free(3600)
    state = vram.check()
    assert state.event == "enter" and vram.max_streams == 1 and vram.chunk_bias == 0.8
    assert memory.empty_cache_calls == 1 and vram.cache_clears == {"pressure": 1}
    assert vram.events[-1]["event"] == "enter" and vram.events[-1]["peak_mb"] == 5600.0
    for _ in range(3):
        vram.check()  # 2000 / 6144 = 33 %: calm
    assert vram.events[-1]["event"] == "leave" and vram.max_streams == 2
    assert vram.run_peak_allocated_mb == 5600.0


def test_release_triggers_are_counted() -> None:
    vram, memory = manager()
    for trigger in ("cancel", "request_done", "request_done"):
        vram.release(trigger)
    assert vram.cache_clears == {"cancel": 1, "request_done": 2} and memory.empty_cache_calls == 3


def test_oom_frees_retries_smaller_then_degrades() -> None:
    vram, memory = manager(HIGH)
    seen: list[OomAttempt] = []

    def synthesize(attempt: OomAttempt) -> str:
        seen.append(attempt)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")

    outcome = vram.run_with_oom_recovery(synthesize, label="chunk 4")
    assert outcome.degrade and outcome.value is None and outcome.attempts == 2
    assert [a.shrink for a in seen] == [1.0, 0.5]
    assert seen[1].max_streams == 1 and "Tried to allocate" in seen[1].previous_error
    assert vram.oom_count == 2 and vram.cache_clears == {"oom": 2} and memory.empty_cache_calls == 2
    assert vram.events[-1]["event"] == "oom" and vram.events[-1]["label"] == "chunk 4"


def test_oom_then_success_keeps_the_value() -> None:
    vram, _memory = manager(HIGH)
    calls = iter([torch.OutOfMemoryError("CUDA out of memory"), None])

    def synthesize(attempt: OomAttempt) -> float:
        err = next(calls)
        if err is not None:
            raise err
        return attempt.shrink

    outcome = vram.run_with_oom_recovery(synthesize)
    assert not outcome.degrade and outcome.value == 0.5 and outcome.attempts == 2
    assert len(outcome.errors) == 1


def test_other_errors_are_not_swallowed() -> None:
    vram, _memory = manager()

    def broken(_attempt: OomAttempt) -> None:
        raise ValueError("bad text")

    with pytest.raises(ValueError, match="bad text"):
        vram.run_with_oom_recovery(broken)
    assert vram.oom_count == 0


def test_oom_recognition() -> None:
    assert is_oom_error(torch.OutOfMemoryError("x"))
    assert is_oom_error(torch.cuda.OutOfMemoryError("x"))
    assert is_oom_error(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_oom_error(MemoryError())


def test_status_reports_tier_limit_and_usage() -> None:
    vram, memory = manager(MODEST, total=12288.0)
    vram.apply_limit()
    memory.allocate(2100)
    vram.check()
    status = vram.status()
    assert status["active"] and status["tier"] == "Modest"
    assert status["limit_mb"] == 3584.0 and status["total_mb"] == 12288.0
    assert status["allocated_mb"] == 2100.0 and status["peak_allocated_mb"] == 2100.0
    assert status["pressure"] == {"level": 0, "ratio": round(2100 / 3584, 4), "max_streams": 1, "chunk_bias": 0.9}
    assert status["process_used_mb"] is None  # no NVML sampler here
