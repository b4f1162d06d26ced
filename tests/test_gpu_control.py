"""GPU control in the TTS worker (``actors/gpu/control.py``, ``actors/gpu/hooks.py``) on a
machine without a GPU.

The logic lives in two pure state machines (``PressureGovernor``, ``UtilizationPolicy``), driven
here by sample sequences. The stand-ins are only at the missing-GPU boundary, in
``tests/support/gpu_doubles.py``: ``RecordedGpuSampler`` (NVML readings) and
``ScriptedCudaMemory`` (torch.cuda's counters, raising torch's real ``OutOfMemoryError`` past
the limit). The TTS worker and ``scripts/bench gpu`` above them are the real code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from actors import wire
from actors.gpu.control import (
    OomRecovery,
    PressureGovernor,
    UtilizationController,
    UtilizationPolicy,
    VramManager,
    control_status,
    is_oom_error,
)
from actors.gpu.hooks import GpuControlHooks
from actors.gpu.tiers import (
    TIER_CONFIGS,
    GpuDetection,
    GpuInfo,
    ResolvedGpuConfig,
    Tier,
    TierConfig,
    detect_gpus,
    resolve_gpu_config,
)
from actors.tts.base import CancelToken, TtsEngine, VoiceInfo
from config.settings import load_settings
from tests.support.gpu_doubles import RecordedGpuSampler, ScriptedCudaMemory

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
    assert vram.recover_from_oom(ValueError("not an OOM")) is None and vram.oom_count == 0
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


def oom_in(memory: ScriptedCudaMemory, mb: float) -> BaseException:
    """The exception torch raises when ``mb`` more does not fit under the limit, as caught."""
    try:
        memory.allocate(mb)
    except Exception as exc:
        return exc
    raise AssertionError(f"{mb} MiB fit under the limit")


def test_oom_recovery_frees_drops_to_the_deepest_level_and_says_what_to_do() -> None:
    vram, memory = manager(HIGH)
    vram.apply_limit()
    memory.allocate(2000)
    recovery = vram.recover_from_oom(oom_in(memory, 9000), label="chunk 4")
    assert recovery == OomRecovery(
        error="OutOfMemoryError: CUDA out of memory. Tried to allocate 9000.00 MiB. 2000.00 MiB is allocated "
        "by PyTorch, and the limit is 10240.00 MiB (scripted)",
        oom_count=1,
        level=3,
        max_streams=1,
        chunk_bias=0.512,
    )
    assert vram.max_streams == 1 and vram.chunk_bias == 0.512  # what the worker's hooks hand out next
    assert vram.cache_clears == {"oom": 1} and memory.empty_cache_calls == 1
    assert vram.events[-1]["event"] == "oom" and vram.events[-1]["label"] == "chunk 4"
    assert vram.recover_from_oom(oom_in(memory, 9000)) is not None and vram.oom_count == 2
    # Calm checks give the levels back one at a time, as after any pressure.
    for _ in range(3):
        vram.check()
    assert vram.pressure.event == "step_up" and vram.max_streams == 1 and vram.pressure.level == 2


def test_recovery_frees_what_the_failed_call_held_before_clearing_the_cache() -> None:
    """The failed call's frames hold its tensors through the traceback: recovery must let go of
    them, or empty_cache cannot hand their blocks back to the driver."""
    vram, memory = manager(MID)
    vram.apply_limit()
    memory.allocate(2000)  # the weights

    def synthesize() -> None:
        activations = memory.tensor(3000)  # noqa: F841 - held by this frame when the OOM comes
        memory.tensor(2000)  # 7000 > 6144: torch's OutOfMemoryError

    try:
        synthesize()
    except Exception as exc:
        assert vram.recover_from_oom(exc) is not None
        assert exc.__traceback__ is None
    assert memory.allocated_at_clear == [2000.0]


def test_other_errors_are_not_ours() -> None:
    vram, memory = manager()
    for exc in (ValueError("bad text"), RuntimeError("CUDA error: device-side assert triggered")):
        assert vram.recover_from_oom(exc) is None
    assert vram.oom_count == 0 and vram.events == [] and memory.empty_cache_calls == 0
    assert vram.pressure.level == 0


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


# ---------------------------------------------------------------- the worker's hooks; one OOM path for worker and bench

L4 = GpuInfo(0, "NVIDIA L4", 23034, 22000, (8, 9), "GPU-0", 0)
RATE = 24000
WEIGHTS_MB = 1900.0


def l4_hooks() -> tuple[GpuControlHooks, ScriptedCudaMemory]:
    """The worker's GPU hooks on an L4 (Mid-Range: 6144 MiB limit), its memory scripted."""
    resolved: ResolvedGpuConfig = resolve_gpu_config(load_settings(env={}), GpuDetection((L4,), via="nvml"))
    memory = ScriptedCudaMemory(total=float(L4.vram_total_mb))
    hooks = GpuControlHooks(
        resolved, vram=VramManager(resolved.config, memory), util=UtilizationController(resolved.config, None)
    )
    memory.allocate(WEIGHTS_MB)  # the model loads after the hooks set the limit, as in the worker
    return hooks, memory


class XttsOnScriptedGpu(TtsEngine):
    """Stands in for XTTS on a GPU, which this machine has not: every synthesis holds
    ``need_mb`` of activations on the scripted card while it runs, so past the limit it raises
    torch's OutOfMemoryError where XTTS would. Knows only its own voice, as XTTS knows no Piper
    voice."""

    name = "xtts"

    def __init__(self, memory: ScriptedCudaMemory, need_mb: float) -> None:
        self.memory, self.need_mb = memory, need_mb

    def load_voice(self, voice: str) -> VoiceInfo:
        if voice not in ("", "narrator"):
            from actors.tts.base import EngineError

            raise EngineError(f"no XTTS voice {voice!r}")
        return VoiceInfo("narrator", self.name, RATE, 15.0)

    def list_voices(self) -> list[str]:
        return ["narrator"]

    def synthesize(self, text: str, voice: str, cancel: CancelToken, speed: float = 1.0) -> Iterator[np.ndarray]:
        activations = self.memory.tensor(self.need_mb)
        yield np.zeros(RATE // 10, dtype=np.float32)
        del activations


def test_hooks_set_the_limit_first_and_hand_out_what_pressure_allows() -> None:
    hooks, memory = l4_hooks()
    assert memory.fraction == pytest.approx(6144 / 23034)  # set before the weights were allocated
    assert hooks.streams(3) == 2 and hooks.chunk_bias() == 1.0
    memory.tensor(4000)  # a chunk peaks at 5900 of 6144 MiB: pressure at the next dispatch
    assert hooks.pause_before_dispatch(5.0) == 0.0
    assert hooks.streams(3) == 1 and hooks.chunk_bias() == 0.8
    hooks.after_cancel()
    hooks.after_request()
    assert hooks.vram.cache_clears == {"pressure": 1, "cancel": 1, "request_done": 1}
    status = hooks.status()
    assert status["tier"] == "Mid-Range" and status["vram"]["pressure"]["level"] == 1
    assert hooks.on_error(ValueError("bad text")) is None and hooks.vram.oom_count == 0


def test_the_worker_and_the_benchmark_share_one_oom_path() -> None:
    """An OOM at the boundary, in the real TTS worker and in ``scripts/bench gpu``'s runner, each
    with its own hooks: both end in the same recovery state, because both go through
    ``GpuControlHooks.on_error`` to ``VramManager.recover_from_oom``."""
    from actors.tts import create_engine
    from actors.tts_worker import TtsWorker
    from scripts import bench_gpu
    from shm import PcmRing

    text = "The door creaks open, and cold air rolls out of the crypt below."
    settings = load_settings(env={"SKALD_TTS_ENGINE": "xtts"})
    piper = create_engine("piper")

    worker_hooks, worker_memory = l4_hooks()
    sent: list[wire.Message] = []
    ring = PcmRing.create(f"skald-{os.getpid()}-gpu-oom", 1 << 17, RATE, 4.0, role="producer")
    try:
        worker = TtsWorker(
            settings, XttsOnScriptedGpu(worker_memory, 6000), ring, sent.append, fallback=piper, gpu=worker_hooks
        )
        try:
            worker.handle(wire.OpenRequest(request_id="r1"))
            worker.handle(wire.TextPiece(request_id="r1", source="narrative", text=text, final=True))
            worker.synthesize_next()
        finally:
            worker.close()
    finally:
        ring.close()
        ring.unlink()
    synthesized = [m for m in sent if isinstance(m, wire.ChunkSynthesized)]
    assert [m.engine for m in synthesized] == ["piper"]  # XTTS ran out of memory twice, Piper spoke

    bench_hooks, bench_memory = l4_hooks()
    piper_voice = piper.load_voice(settings.tts.fallback_voice)
    runner = bench_gpu.Runner(
        (XttsOnScriptedGpu(bench_memory, 6000), "narrator", RATE),
        bench_hooks,
        bench_gpu.PlaybackClock(0.5),
        4.0,
        configured_streams=2,
        fallback=(piper, piper_voice.name, piper_voice.sample_rate),
    )
    assert runner.synthesize_chunk(bench_gpu._Chunk(0, text)) == "piper"
    piper.close()

    def without_times(hooks: GpuControlHooks) -> list[dict[str, Any]]:
        return [{k: v for k, v in event.items() if k != "t"} for event in hooks.vram.events]

    assert worker_hooks.status() == bench_hooks.status()
    assert without_times(worker_hooks) == without_times(bench_hooks)
    vram = worker_hooks.status()["vram"]
    assert vram["oom_count"] == 2 and vram["cache_clears"] == {"oom": 2}
    assert vram["pressure"] == {"level": 3, "ratio": 0.0, "max_streams": 1, "chunk_bias": 0.512}
    assert vram["allocated_mb"] == WEIGHTS_MB  # the failed tries' activations were freed
    assert [e["event"] for e in without_times(worker_hooks)] == ["oom", "oom"]
    assert worker_hooks.streams(2) == bench_hooks.streams(2) == 1
