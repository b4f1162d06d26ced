"""``actors.gpu.sensors`` against the NVML and ``torch.cuda`` doubles of
``tests/support/gpu_stack_doubles.py`` (this machine has no GPU, so the real modules only ever say
"no driver"): the sampler's readings, each query that fails, and the memory counters in MiB."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from actors.gpu.sensors import MIB, GpuSample, NvmlSampler, TorchCudaMemory
from tests.support.gpu_stack_doubles import FakeCudaDevice, FakeNvmlCard, fake_pynvml, fake_torch


def _card(**kwargs: object) -> FakeNvmlCard:
    fields: dict[str, object] = {"name": "L4", "total_mib": 23034, "free_mib": 20000, "cc": (8, 9), "uuid": "GPU-a"}
    fields.update(kwargs)
    return FakeNvmlCard(**fields)  # type: ignore[arg-type]


def _install_nvml(monkeypatch: pytest.MonkeyPatch, cards: list[FakeNvmlCard], **kwargs: object) -> object:
    mod = fake_pynvml(cards, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return mod


def test_a_sample_reads_utilization_memory_and_this_process_share(monkeypatch: pytest.MonkeyPatch) -> None:
    other = _card(name="other")
    card = _card(util_pct=73, used_mib=5120, processes=[(os.getpid() + 1, 900 * MIB), (os.getpid(), 2048 * MIB)])
    nvml = _install_nvml(monkeypatch, [other, card])
    sampler = NvmlSampler(1, clock=lambda: 12.5)
    assert sampler.sample() == GpuSample(12.5, 73.0, 5120.0, 2048.0)
    sampler.close()
    sampler.close()  # a second close is a no-op: NVML is shut down once
    assert nvml.calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_this_process_share_is_none_when_nvml_cannot_see_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a PID namespace NVML lists other pids; with no permission it reports no memory (None).
    _install_nvml(monkeypatch, [_card(util_pct=10, processes=[(os.getpid(), None), (1, 64 * MIB)])])
    assert NvmlSampler(0, clock=lambda: 1.0).sample() == GpuSample(1.0, 10.0, 0.0, None)


def test_a_failing_process_query_keeps_the_utilization_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_nvml(monkeypatch, [_card(util_pct=40, used_mib=100, processes_error=True)])
    assert NvmlSampler(0, clock=lambda: 2.0).sample() == GpuSample(2.0, 40.0, 100.0, None)


def test_a_failing_sample_is_none_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install_nvml(monkeypatch, [_card(sample_error=True)])
    sampler = NvmlSampler(0)
    with caplog.at_level(logging.WARNING, logger="skald.gpu"):
        assert sampler.sample() is None
        assert sampler.sample() is None
    warnings = [r.getMessage() for r in caplog.records if "NVML sample failed" in r.getMessage()]
    assert len(warnings) == 1 and "holds its last decision" in warnings[0]


def test_an_index_past_the_last_card_raises_and_shuts_nvml_down(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _install_nvml(monkeypatch, [_card()])
    with pytest.raises(nvml.NVMLError_InvalidArgument):  # type: ignore[attr-defined]
        NvmlSampler(3)
    assert nvml.calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_a_failing_nvml_shutdown_is_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _install_nvml(monkeypatch, [_card()], shutdown_error=True)
    NvmlSampler(0).close()
    assert nvml.calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_torch_cuda_memory_reports_one_device_in_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [
        FakeCudaDevice("A", 16384, (8, 0)),
        FakeCudaDevice(
            "B", 24576, (8, 9), allocated_mib=1000, reserved_mib=1500, peak_allocated_mib=3000, peak_reserved_mib=4000
        ),
    ]
    torch = fake_torch(devices)
    monkeypatch.setitem(sys.modules, "torch", torch)
    memory = TorchCudaMemory(1)
    assert (memory.total_mb(), memory.allocated_mb(), memory.reserved_mb()) == (24576.0, 1000.0, 1500.0)
    assert (memory.peak_allocated_mb(), memory.peak_reserved_mb()) == (3000.0, 4000.0)
    memory.reset_peak()
    assert (memory.peak_allocated_mb(), memory.peak_reserved_mb()) == (1000.0, 1500.0)
    memory.empty_cache()
    assert memory.reserved_mb() == 1000.0
    memory.set_limit_fraction(0.5)
    assert torch.cuda.fractions == {1: 0.5}


def test_torch_cuda_memory_without_cuda_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch([], cuda=None))
    with pytest.raises(RuntimeError, match=r"torch\.cuda is not available"):
        TorchCudaMemory()
