"""The TTS worker's error paths in-process: a real ``TtsWorker`` with the real Piper voice and a
real ``PcmRing`` made by the test. Fault plans that are malformed, no engine at all, a degraded
worker (main engine gone, the fallback speaks) that says so, a chunk that fails with no fallback,
a voice tag naming an unknown voice, narrative text that arrives before the prelude, a live
config naming an unknown voice, a lexicon edited into a broken file, and ``build_engines`` when
the main engine cannot load."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors import wire
from actors.tts import create_engine
from actors.tts.base import EngineError, TtsEngine
from actors.tts_worker import FaultPlan, TtsWorker, build_engines
from config.settings import Settings, load_settings
from shm import PcmRing

VOICE = "en_US-joe-medium"
_rings = itertools.count()


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def piper() -> Iterator[TtsEngine]:
    engine = create_engine("piper", load_settings(None, env={}))
    engine.load_voice(VOICE)
    yield engine
    engine.close()


@pytest.fixture
def ring() -> Iterator[PcmRing]:
    r = PcmRing.create(f"skald-{os.getpid()}-w{next(_rings)}", 1 << 20, 22050, 30.0, role="producer")
    yield r
    r.close()
    r.unlink()


class Worker:
    """A worker, what it sent, and a way to run every queued chunk to its end."""

    def __init__(self, settings: Settings, ring: PcmRing, engine: TtsEngine | None, **kw: Any) -> None:
        self.sent: list[wire.Message] = []
        self.worker = TtsWorker(settings, engine, ring, self.sent.append, **kw)

    def speak(self, request_id: str, *pieces: tuple[str, str, bool], **open_kw: Any) -> None:
        self.worker.handle(wire.OpenRequest(request_id=request_id, **open_kw))
        for source, text, final in pieces:
            self.worker.handle(wire.TextPiece(request_id=request_id, source=source, text=text, final=final))  # type: ignore[arg-type]
        while self.worker.has_work:
            self.worker.synthesize_next()

    def of(self, kind: type[wire.Message]) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]

    def close(self) -> None:
        self.worker.close()


def _settings(**overrides: Any) -> Settings:
    return load_settings(None, env={}, overrides=overrides)


# ---------------------------------------------------------------- construction
def test_a_fault_plan_is_read_and_a_misspelt_one_is_refused() -> None:
    plan = FaultPlan("load, chunk=2,times=1,after=3")
    assert (plan.fail_load, plan.chunk, plan.times, plan.after_blocks) == (True, 2, 1, 3)
    with pytest.raises(ValueError, match=r"unknown fault 'chunks=1' \(known: load, chunk=I, times=N, after=B\)"):
        FaultPlan("chunks=1")


def test_a_worker_without_any_engine_says_why(ring: PcmRing) -> None:
    with pytest.raises(EngineError, match="xtts unavailable: no CUDA"):
        TtsWorker(_settings(), None, ring, lambda _m: None, engine_error="xtts unavailable: no CUDA")


def test_a_degraded_worker_speaks_with_the_fallback_and_says_so(piper: TtsEngine, ring: PcmRing) -> None:
    w = Worker(_settings(), ring, None, fallback=piper, engine_error="xtts unavailable: no CUDA")
    try:
        info = w.worker.ready_info()
        assert info["degraded"] == "xtts unavailable: no CUDA" and info["engine"] == "piper"
        inbox: queue.Queue[wire.Message] = queue.Queue()
        inbox.put(wire.Shutdown())
        w.worker.run(threading.Event(), inbox)  # reports, then takes the Shutdown
        errors = w.of(wire.Error)
        assert [(e.kind, e.message) for e in errors] == [("engine_unavailable", "xtts unavailable: no CUDA")]
        w.speak("r1", ("narrative", "The fallback speaks.", True))
        assert [m.engine for m in w.of(wire.ChunkSynthesized)] == ["piper"]
    finally:
        w.close()


# ---------------------------------------------------------------- synthesis
def test_a_chunk_that_fails_with_no_fallback_is_reported_and_the_request_still_ends(
    piper: TtsEngine, ring: PcmRing
) -> None:
    w = Worker(_settings(**{"tts.fallback_engine": ""}), ring, piper, faults=FaultPlan("chunk=0"))
    try:
        w.speak("r1", ("narrative", "This chunk fails twice.", True))
        failed = [e for e in w.of(wire.Error) if e.kind == "synthesis_failed"]
        assert len(failed) == 1 and failed[0].request_id == "r1"
        assert "injected fault (SKALD_FAULT_INJECT) in chunk 0" in failed[0].message
        # The request still ends: the consumer is told where (an empty last segment), no audio.
        last = [m for m in w.of(wire.Segment) if m.last]
        assert [(m.request_id, m.end - m.start) for m in last] == [("r1", 0)]
        assert "r1" not in w.worker.requests and ring.write_index == 0
    finally:
        w.close()


def test_a_voice_tag_naming_an_unknown_voice_keeps_the_requests_voice(piper: TtsEngine, ring: PcmRing) -> None:
    w = Worker(_settings(), ring, piper)
    try:
        w.speak("r1", ("narrative", "The door opens. [voice:nobody] Who goes there? [voice:nobody] Hello?", True))
        bad = [e for e in w.of(wire.Error) if e.kind == "bad_request"]
        assert len(bad) == 1  # once per request and voice, not once per chunk
        assert "unknown voice 'nobody'" in bad[0].message and "keeps the voice 'en_US-joe-medium'" in bad[0].message
        synthesized = w.of(wire.ChunkSynthesized)
        assert len(synthesized) >= 2 and all(m.dur_s > 0 for m in synthesized)  # all of it is spoken
    finally:
        w.close()


def test_narrative_text_that_comes_before_the_prelude_waits_for_it(piper: TtsEngine, ring: PcmRing) -> None:
    w = Worker(_settings(), ring, piper)
    try:
        w.speak(
            "r1",
            ("narrative", "The rest of the story.", True),
            ("prelude", "First this.", True),
            has_prelude=True,
        )
        planned = w.of(wire.ChunkPlanned)
        spoken = " ".join(p.text for p in planned)
        assert spoken.index("First this.") < spoken.index("The rest of the story.")
    finally:
        w.close()


# ---------------------------------------------------------------- the ring's reader
def test_a_push_waiting_on_a_dead_consumer_goes_on_with_the_restarted_one(piper: TtsEngine) -> None:
    from tests.support.ring_reader import take

    name = f"skald-{os.getpid()}-w{next(_rings)}"
    ring = PcmRing.create(name, 1 << 16, 22050, 0.5, role="producer")  # the guard: 11025 frames
    old = PcmRing.attach(name, "consumer")
    old.close()  # the consumer died: a waiting worker gets PeerDeadError, and must wait on
    w = Worker(_settings(), ring, piper)
    new: PcmRing | None = None
    try:
        w.worker.handle(wire.OpenRequest(request_id="r1"))
        req = w.worker.requests["r1"]
        audio = np.full(3 * 11025, 0.25, dtype=np.float32)
        pushed: list[int] = []
        pusher = threading.Thread(target=lambda: pushed.append(w.worker._push(req, 0, audio, None)))
        pusher.start()
        deadline = time.monotonic() + 30
        while ring.write_index < 11025 and time.monotonic() < deadline:  # the guard is full: it waits
            time.sleep(0.005)
        assert ring.write_index == 11025 and pusher.is_alive()
        new = PcmRing.attach(name, "consumer")  # the restarted consumer takes the role over
        new.start_heartbeat()
        read = 0
        while read < len(audio) and time.monotonic() < deadline:
            read += len(take(new, 4096))
        pusher.join(30)
        assert pushed == [len(audio)] and read == len(audio)  # nothing lost, nothing dropped
        assert sum(s.end - s.start for s in w.of(wire.Segment)) == len(audio)
    finally:
        w.close()
        if new is not None:
            new.close()
        ring.close()
        ring.unlink()


def test_a_push_cancelled_while_waiting_for_space_stops_at_what_fit(piper: TtsEngine) -> None:
    name = f"skald-{os.getpid()}-w{next(_rings)}"
    ring = PcmRing.create(name, 1 << 16, 22050, 0.5, role="producer")
    reader = PcmRing.attach(name, "consumer")  # alive, not reading (a paused speaker)
    reader.start_heartbeat()
    w = Worker(_settings(), ring, piper)
    try:
        w.worker.handle(wire.OpenRequest(request_id="r1"))
        req = w.worker.requests["r1"]
        req.cancel.cancel()
        assert w.worker._push(req, 0, np.full(2 * 11025, 0.25, dtype=np.float32), None) == 11025
        assert [(s.start, s.end) for s in w.of(wire.Segment)] == [(0, 11025)]  # announced: what fit
    finally:
        w.close()
        reader.close()
        ring.close()
        ring.unlink()


# ---------------------------------------------------------------- live settings and lexicon
def test_a_live_config_naming_an_unknown_voice_is_refused_and_the_voice_kept(piper: TtsEngine, ring: PcmRing) -> None:
    settings = _settings()
    w = Worker(settings, ring, piper)
    try:
        w.worker.apply_config(settings.replace({"tts.voice": "nobody"}, "skald config set"))
        errors = w.of(wire.Error)
        assert len(errors) == 1 and errors[0].kind == "bad_request"
        assert errors[0].message.startswith("tts.voice: unknown voice 'nobody'")
        assert w.worker.default_voice == VOICE
    finally:
        w.close()


def test_a_lexicon_edited_into_a_broken_file_keeps_its_previous_words(
    piper: TtsEngine, ring: PcmRing, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lexicon = tmp_path / "lexicon.toml"
    lexicon.write_text('Drizzt = "Drizz-t"\n')
    w = Worker(_settings(**{"chunker.lexicon": str(lexicon)}), ring, piper)
    try:
        lexicon.write_text("Drizzt = \n")  # a GM's half-saved edit
        os.utime(lexicon, (1, 1))  # a new mtime whatever the file system's clock grain
        with caplog.at_level(logging.WARNING, logger="skald.tts_worker"):
            w.worker.handle(wire.OpenRequest(request_id="r1"))
        assert "lexicon not reloaded, keeping its previous words" in caplog.text and str(lexicon) in caplog.text
        assert w.worker.lexicon is not None and w.worker.lexicon.get("Drizzt") == "Drizz-t"
    finally:
        w.close()


# ---------------------------------------------------------------- build_engines
def test_a_main_engine_that_cannot_load_with_no_other_engine_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKALD_FAULT_INJECT", "load")
    with pytest.raises(EngineError, match=r"piper unavailable: injected fault \(SKALD_FAULT_INJECT=load\)"):
        build_engines(_settings())  # the fallback is piper too: nothing else could speak
    monkeypatch.delenv("SKALD_FAULT_INJECT")
    with pytest.raises(EngineError, match=r"piper unavailable: .*nobody"):
        build_engines(_settings(**{"tts.voice": "nobody", "tts.fallback_engine": ""}))


def test_a_main_engine_that_cannot_load_leaves_the_fallback_to_speak(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SKALD_FAULT_INJECT", "load")
    with caplog.at_level(logging.ERROR, logger="skald.tts_worker"):
        main, fallback, error = build_engines(_settings(**{"tts.engine": "xtts"}))
    try:
        assert main is None and fallback is not None and fallback.name == "piper"
        assert error == "xtts unavailable: injected fault (SKALD_FAULT_INJECT=load)"
        assert f"{error}; piper speaks instead" in caplog.text
    finally:
        if fallback is not None:
            fallback.close()


# ---------------------------------------------------------------- cancel ahead of order
def test_an_eager_cancel_drops_the_head_chunk_before_any_of_it_is_pushed(piper: TtsEngine, ring: PcmRing) -> None:
    w = Worker(_settings(), ring, piper)
    try:
        w.worker.handle(wire.OpenRequest(request_id="r1"))
        w.worker.handle(wire.TextPiece(request_id="r1", source="narrative", text="One. Two. Three.", final=True))
        w.worker._dispatch()  # the first chunk is on a synthesis thread
        assert w.worker._inflight
        w.worker.on_eager(wire.Cancel(request_id="r1"))  # the IO thread, before the loop sees it
        w.worker.pump()
        assert not w.worker._inflight and ring.write_index == 0 and not w.of(wire.Segment)
        w.worker.handle(wire.Cancel(request_id="r1"))  # then in order: nothing of it is left
        assert not w.worker.has_work and "r1" not in w.worker.requests
    finally:
        w.close()


# ---------------------------------------------------------------- GPU control
def test_xtts_gets_gpu_control_only_where_torch_confirms_a_usable_device() -> None:
    import torch

    from actors.gpu.hooks import GpuHooks
    from actors.gpu.tiers import Tier, detect_gpus, resolve_gpu_config
    from actors.tts_worker import _gpu_hooks

    settings = _settings(**{"tts.engine": "xtts"})
    hooks, confirmed = _gpu_hooks(settings, resolve_gpu_config(settings, detect_gpus(use_torch=False)))
    # torch.cuda is asked (it may disagree with NVML): its verdict is the tier the worker reports.
    assert confirmed is not None
    assert (type(hooks) is not GpuHooks) == confirmed.on_gpu  # GPU control only on a usable device
    if not torch.cuda.is_available():
        assert confirmed.tier is Tier.CPU and type(hooks) is GpuHooks
    assert _gpu_hooks(settings, None)[1] is None  # no detection at all (an in-process worker)


def test_a_live_gpu_knob_that_the_tier_refuses_is_reported_and_gpu_status_is_in_the_metrics(
    piper: TtsEngine, ring: PcmRing
) -> None:
    from tests.test_gpu_control import l4_hooks  # GPU control on an L4 made of the no-GPU doubles

    hooks, _memory = l4_hooks()
    settings = _settings()
    w = Worker(settings, ring, piper, gpu=hooks)
    try:
        assert w.worker.metrics()["gpu"] == hooks.status() != {}
        w.worker.apply_config(settings.replace({"gpu.vram_limit_gb": "0.05"}, "skald config set"))
        errors = w.of(wire.Error)
        assert len(errors) == 1 and errors[0].kind == "bad_request"
        assert errors[0].message.startswith("GPU settings: config error: gpu.vram_limit_gb = 0.05")
        assert w.worker.settings.gpu.vram_limit_gb == 0.05  # the rest of the change is in force
    finally:
        w.close()
        hooks.close()


# ---------------------------------------------------------------- the process's worker
def test_a_worker_process_that_cannot_build_its_engines_lets_go_of_its_ring(tmp_path: Path) -> None:
    from actors.runtime import ActorSpec

    name = f"skald-{os.getpid()}-w{next(_rings)}"
    ring = PcmRing.create(name, 1 << 16, 22050, 2.0)
    bad = _settings(**{"tts.voice": "nobody", "tts.fallback_engine": ""})
    good = _settings(**{"tts.parallel_streams": 2})
    try:
        spec = ActorSpec(wire.Role.TTS_WORKER, "", bad.to_dict(), str(tmp_path), os.getppid(), name)
        with pytest.raises(EngineError, match=r"piper unavailable: .*'nobody'"):
            TtsWorker.from_spec(spec, lambda _m: None)
        # The producer role is free again (a refused attach would say a live producer holds it).
        spec = ActorSpec(wire.Role.TTS_WORKER, "", good.to_dict(), str(tmp_path), os.getppid(), name)
        worker = TtsWorker.from_spec(spec, lambda _m: None)
        try:
            assert worker.parallel_streams == 2 and worker.engine_name == "piper"
        finally:
            worker.close()  # closes the engines and the ring handle it owns
        PcmRing.attach(name, "producer").close()  # ...and so lets the role go too
    finally:
        ring.close()
        ring.unlink()
