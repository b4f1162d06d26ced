"""The audio consumer's error paths in-process, on a real shared-memory ring: a wav sink whose
disk is full (one ``audio_output`` error, a clean close), cancels of requests that have no audio
here (one ``Silenced`` each, a late segment of theirs never played), frames pushed but never
announced, an urgent request's skip that reopens a request, more skip windows than the callback's
table holds, and a live pre-buffer change."""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors import wire
from actors.audio.prebuffer import PrebufferConfig, PrebufferPolicy
from actors.audio_consumer import (
    MAX_WINDOWS,
    PLAY_LIMIT,
    AudioConsumer,
    ConsumerControl,
    PlaybackCore,
)
from config.settings import load_settings
from shm import PcmRing
from tests.support.ring_reader import pattern

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_report import starved_narration  # scripts/ is not a package: on sys.path above

RATE = 22050
BLOCK = 128
_names = itertools.count()


@pytest.fixture(autouse=True)
def _no_skald_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SKALD_") and k != "SKALD_TESTRUN_ID"]:
        monkeypatch.delenv(name)


class Rings:
    """The worker's end (``producer``) and the consumer's end of one real ring."""

    def __init__(self) -> None:
        name = f"skald-{os.getpid()}-c{next(_names)}"
        self.producer = PcmRing.create(name, 1 << 17, RATE, 4.0, role="producer")
        self.consumer = PcmRing.attach(name, "consumer")

    def push(self, n: int) -> tuple[int, int]:
        start = self.producer.write_index
        assert self.producer.push(pattern(start, n) * 0.5 + 0.25) == n  # never zero: silence shows
        return start, start + n

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
        self.producer.unlink()


@pytest.fixture
def rings() -> Iterator[Rings]:
    r = Rings()
    yield r
    r.close()


class Control:
    """A callback core and its control, no sink: the test renders the blocks itself."""

    def __init__(self, ring: PcmRing) -> None:
        self.sent: list[wire.Message] = []
        self.core = PlaybackCore(ring, BLOCK, PrebufferPolicy(PrebufferConfig(start_s=0.0)), 8.0)
        self.control = ConsumerControl(self.core, self.sent.append)

    def play(self, blocks: int) -> np.ndarray:
        out = np.zeros(BLOCK, dtype=np.int16)
        played = []
        for _ in range(blocks):
            # A DAC time in the past: every block is heard by the time poll() looks.
            self.core.render(out, time.monotonic() - 1.0)
            played.append(out.copy())
            self.control.poll()
        return np.concatenate(played)

    def of(self, kind: type[wire.Message]) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]


@pytest.fixture
def ctl(rings: Rings) -> Control:
    return Control(rings.consumer)


# ---------------------------------------------------------------- sink failure
def test_a_wav_sink_on_a_full_disk_reports_one_error_and_closes_cleanly(rings: Rings) -> None:
    settings = load_settings(
        None, env={}, overrides={"audio.sink": "wav:/dev/full", "audio.wav_paced": False, "prebuffer.start_s": 0.01}
    )
    sent: list[wire.Message] = []
    consumer = AudioConsumer(settings, rings.consumer, sent.append)
    stop = threading.Event()
    inbox: queue.Queue[wire.Message] = queue.Queue()
    loop = threading.Thread(target=consumer.run, args=(stop, inbox))
    try:
        start, end = rings.push(RATE)  # a second of audio: far more than the file's write buffer
        inbox.put(wire.Segment(request_id="r1", index=0, start=start, end=end, last=True))
        loop.start()
        deadline = time.monotonic() + 30
        while not any(isinstance(m, wire.Error) for m in sent) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        if loop.is_alive():
            loop.join(30)
        consumer.close()  # the file's close fails too: the error is already reported
    errors = [m for m in sent if isinstance(m, wire.Error)]
    assert len(errors) == 1 and errors[0].kind == "audio_output" and errors[0].actor == "audio_consumer"
    assert errors[0].message.startswith("OSError") and "No space left on device" in errors[0].message


# ---------------------------------------------------------------- cancels and segments
def test_a_cancel_of_a_request_with_no_audio_here_is_silent_at_once_and_once(rings: Rings, ctl: Control) -> None:
    ctl.control.handle(wire.Cancel(request_id="queued"))
    ctl.control.handle(wire.Cancel(all=True, request_ids=["queued", "other"]))
    silenced = ctl.of(wire.Silenced)
    assert [(s.request_id, s.was_audible) for s in silenced] == [("queued", False), ("other", False)]
    # Its audio, pushed before the worker saw the cancel, is announced after ours: never heard.
    start, end = rings.push(4 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="queued", index=0, start=start, end=end, last=True))
    assert not ctl.play(6).any()
    assert rings.consumer.read_index == end and "queued" not in ctl.control.requests
    assert not ctl.of(wire.RequestFinished) and len(ctl.of(wire.Silenced)) == 2


def test_frames_pushed_but_never_announced_are_skipped(rings: Rings, ctl: Control) -> None:
    lost = rings.push(2 * BLOCK)  # a worker died between its push and its message
    start, end = rings.push(2 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=start, end=end, last=True))
    assert ctl.control.windows == [list(lost)]
    played = ctl.play(3)
    assert played[: 2 * BLOCK].all() and not played[2 * BLOCK :].any()  # r1's frames only, then silence
    assert rings.consumer.read_index == end
    assert [(m.request_id, m.audio_s) for m in ctl.of(wire.RequestFinished)] == [("r1", 2 * BLOCK / RATE)]


def test_a_skip_that_reopens_a_request_waits_for_its_new_end(rings: Rings, ctl: Control) -> None:
    start, end = rings.push(8 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=start, end=end, last=True))
    ctl.control.handle(wire.Skip(start=start + 4 * BLOCK, end=end, reopen=["r1"], reason="preempted by u1"))
    req = ctl.control.requests["r1"]
    fade = ctl.core.fade_frames
    assert not req.last_seen  # its end comes again with the audio pushed after the urgent one
    assert req.frames == 4 * BLOCK + fade  # the skipped part is counted when it is pushed again
    ctl.play(10)
    assert "r1" in ctl.control.requests and not ctl.of(wire.RequestFinished)


def test_more_skip_windows_than_the_table_holds_stop_the_play_limit_before_the_rest(rings: Rings, ctl: Control) -> None:
    start, end = rings.push(40 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=start, end=end, last=True))
    windows = [(start + 2 * i * BLOCK + BLOCK, start + 2 * i * BLOCK + BLOCK + 10) for i in range(MAX_WINDOWS + 1)]
    for lo, hi in windows:
        ctl.control.handle(wire.Skip(start=lo, end=hi))
    assert len(ctl.control.windows) == MAX_WINDOWS + 1
    # Nothing past the first window the callback cannot see may be played until it can.
    assert ctl.core.ctl[PLAY_LIMIT] == windows[MAX_WINDOWS][0]


# ---------------------------------------------------------------- live settings
def test_a_live_prebuffer_change_keeps_the_start_threshold_unless_given(rings: Rings) -> None:
    settings = load_settings(None, env={}, overrides={"audio.sink": "null", "prebuffer.start_s": 0.4})
    consumer = AudioConsumer(settings, rings.consumer, lambda _m: None)
    try:
        changed = settings.replace({"prebuffer.resume_s": "0.2"}, "skald config set")
        consumer.apply_config(wire.ConfigUpdate(settings=changed.to_dict()))
        config = consumer.core.policy.config
        assert (config.start_s, config.resume_s) == (0.4, 0.2)
        consumer.apply_config(wire.ConfigUpdate(settings=changed.to_dict(), prebuffer_start_s=1.5))
        assert consumer.core.policy.config.start_s == 1.5 and consumer.settings.prebuffer.resume_s == 0.2
    finally:
        consumer.close()


def test_an_adaptive_resume_threshold_halves_the_underruns_of_a_starved_narration() -> None:
    # The model of scripts/bench report's adaptive section: the real callback core, control loop
    # and ring, a producer starved in bursts, on a virtual clock.
    fixed = starved_narration(adaptive=False)
    adaptive = starved_narration(adaptive=True)
    assert fixed["underruns"] >= 8, "the model must starve the fixed threshold, or it shows nothing"
    assert adaptive["underruns"] * 2 <= fixed["underruns"], (adaptive, fixed)
    assert [v for _, v in adaptive["threshold"]][:4] == [0.5, 1.0, 2.0, 3.0]  # doubled, then bounded
    assert [v for _, v in fixed["threshold"]] == [0.5]
    # Fewer, longer waits: the time spent silent is the producer's deficit either way.
    assert adaptive["silent_s"] <= 1.2 * fixed["silent_s"], (adaptive, fixed)


def test_the_adaptive_resume_follows_the_settings_live(rings: Rings) -> None:
    settings = load_settings(None, env={}, overrides={"audio.sink": "null", "prebuffer.adaptive_max_s": 2.0})
    consumer = AudioConsumer(settings, rings.consumer, lambda _m: None)
    try:
        learner = consumer.control.adaptive
        assert learner is not None and (learner.base_s, learner.max_s) == (0.5, 2.0)
        consumer.control._resume_at(learner.on_underrun(0.0))  # what poll() does on an underrun
        assert consumer.core.policy.config.resume_s == 1.0 and consumer.metrics()["resume_s"] == 1.0
        lower = settings.replace({"prebuffer.resume_s": "0.25"}, "skald config set")
        consumer.apply_config(wire.ConfigUpdate(settings=lower.to_dict()))
        assert consumer.core.policy.config.resume_s == 0.75  # the new base plus what was learned
        off = lower.replace({"prebuffer.adaptive": "false"}, "skald config set")
        consumer.apply_config(wire.ConfigUpdate(settings=off.to_dict()))
        assert consumer.control.adaptive is None and consumer.core.policy.config.resume_s == 0.25
        consumer.apply_config(wire.ConfigUpdate(settings=lower.to_dict()))
        assert consumer.control.adaptive is not None and consumer.control.adaptive.current_s == 0.25
    finally:
        consumer.close()


# ---------------------------------------------------------------- device loss (no device needed)
def test_after_a_lost_device_the_cut_chunk_is_heard_again_from_its_start(rings: Rings, ctl: Control) -> None:
    first = rings.push(4 * BLOCK)
    second = rings.push(4 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=first[0], end=first[1]))
    ctl.control.handle(wire.Segment(request_id="r1", index=1, start=second[0], end=second[1], last=True))
    ctl.play(6)  # two blocks into chunk 1 when the device dies
    assert rings.consumer.read_index == 6 * BLOCK
    assert ctl.control.replay_from(5 * BLOCK) == 2 * BLOCK  # back to chunk 1's start, not to frame 5*BLOCK
    assert rings.consumer.read_index == second[0]
    assert ctl.control.replay_from(rings.consumer.read_index) == 0  # nothing before its start is replayed


def test_a_replay_never_goes_back_over_a_skipped_window(rings: Rings, ctl: Control) -> None:
    start, end = rings.push(8 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=start, end=end, last=True))
    ctl.control.handle(wire.Skip(start=2 * BLOCK, end=4 * BLOCK))  # an urgent request's skip
    ctl.play(6)
    read = rings.consumer.read_index
    assert read > 4 * BLOCK
    assert ctl.control.replay_from(0) == read - 4 * BLOCK  # back to the window's end, not below it
    assert rings.consumer.read_index == 4 * BLOCK


def test_a_device_rate_that_is_no_whole_multiple_of_the_voice_is_refused() -> None:
    from actors.audio_consumer import choose_upsample

    with pytest.raises(RuntimeError, match=r"audio\.device_rate = 30000 Hz is not a whole multiple \(1-8×\)"):
        choose_upsample("any device", 22050, 30000)  # refused before any device is asked
    with pytest.raises(RuntimeError, match=r"use e\.g\. 44100"):
        choose_upsample("any device", 22050, 22050 * 9)


def test_a_restarted_consumer_plays_the_cut_chunk_again_from_its_start(rings: Rings) -> None:
    from tests.support.ring_reader import take

    rings.push(2 * BLOCK)  # an earlier chunk, played whole by the consumer that died
    chunk = rings.push(6 * BLOCK)
    take(rings.consumer, 5 * BLOCK)  # the dead consumer had read into the chunk (maybe never heard)
    fresh = Control(rings.consumer)  # the restarted consumer: nothing announced yet
    fresh.control.handle(wire.Segment(request_id="r1", index=1, start=chunk[0], end=chunk[1], last=True))
    assert rings.consumer.read_index == chunk[0]  # rewound to the chunk's start
    played = fresh.play(7)
    assert played[: 6 * BLOCK].all() and not played[6 * BLOCK :].any()
    assert [(m.request_id, m.audio_s) for m in fresh.of(wire.RequestFinished)] == [("r1", 6 * BLOCK / RATE)]


def test_cancel_all_skips_everything_announced_and_remembers_a_bounded_number_of_cancels(
    rings: Rings, ctl: Control
) -> None:
    from actors.audio_consumer import CANCELLED_MEMORY

    start, end = rings.push(4 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=start, end=end))
    ctl.control.handle(wire.Cancel(all=True, request_ids=[f"q{i}" for i in range(CANCELLED_MEMORY + 10)]))
    assert ctl.control.windows == [[start, end]]  # nothing announced is heard
    assert len(ctl.control._cancelled) == CANCELLED_MEMORY and "q0" not in ctl.control._cancelled
    assert not ctl.play(5).any()


def test_while_held_the_ring_waits_and_the_first_unheard_frame_is_found_from_the_timing_log(
    rings: Rings, ctl: Control
) -> None:
    start, end = rings.push(8 * BLOCK)
    ctl.control.handle(wire.Segment(request_id="r1", index=0, start=start, end=end, last=True))
    period = BLOCK / RATE
    out = np.zeros(BLOCK, dtype=np.int16)
    for k in range(4):  # blocks k at DAC times 100 + k * period
        ctl.core.render(out, 100.0 + k * period)
    read = rings.consumer.read_index
    assert read == 4 * BLOCK
    # The device died half-way through block 2's playing: from there on nothing was heard (to a
    # frame: DAC times are floats, and a frame more replayed is the safe side).
    half = 2 * BLOCK + BLOCK // 2
    assert half - 1 <= ctl.core.first_unheard(100.0 + 2.5 * period) <= half
    assert ctl.core.first_unheard(100.0 + 9 * period) == read  # nothing rendered that late
    for k in range(4, 8):  # held on the fallback clock: silence, the ring is not read
        ctl.core.render_held(out, 100.0 + k * period)
        assert not out.any()
    assert rings.consumer.read_index == read
    assert half - 1 <= ctl.core.first_unheard(100.0 + 2.5 * period) <= half  # held blocks skipped
