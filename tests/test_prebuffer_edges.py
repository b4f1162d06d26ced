"""Pre-buffer state machine (seed §1.6) beyond tests/test_prebuffer.py: one request's whole life
(start, pause on underrun, resume at the resume threshold, flush/cancel, the next request), live
retuning in every state, and the introspection the metrics read (config, thresholds, repr).
"""

from __future__ import annotations

import pytest

from actors.audio.prebuffer import PlaybackState, PrebufferConfig, PrebufferPolicy

IDLE, BUFFERING, PLAYING = PlaybackState.IDLE, PlaybackState.BUFFERING, PlaybackState.PLAYING


def test_one_request_start_underrun_resume_cancel_and_the_next_request() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0, resume_s=0.4, low_water_s=0.1))
    assert policy.start_threshold_s == 1.0
    # Start: waits for start_s, not resume_s.
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(0.99, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PLAYING
    # Underrun: at low water with more to come it pauses, counting one rebuffer.
    assert policy.step(0.11, input_complete=False, has_audio_expected=True) is PLAYING
    assert policy.step(0.1, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.rebuffer_count == 1
    # Resume: now resume_s is enough.
    assert policy.start_threshold_s == 0.4
    assert policy.step(0.39, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(0.4, input_complete=False, has_audio_expected=True) is PLAYING
    # Flush/cancel mid-play: IDLE at once, whatever is still buffered.
    policy.reset()
    assert policy.state is IDLE
    assert policy.start_threshold_s == 1.0  # the next request starts from start_s again
    assert policy.step(0.4, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.rebuffer_count == 1  # cumulative: reset does not clear it
    # The next request ends: what is buffered plays out to empty, then IDLE, no rebuffer.
    assert policy.step(0.4, input_complete=True, has_audio_expected=True) is PLAYING
    assert policy.step(0.05, input_complete=True, has_audio_expected=True) is PLAYING
    assert policy.step(0.0, input_complete=True, has_audio_expected=True) is IDLE
    assert policy.rebuffer_count == 1


def test_retune_while_buffering_waits_for_the_new_start_threshold() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    assert policy.step(0.6, input_complete=False, has_audio_expected=True) is BUFFERING
    new = PrebufferConfig(start_s=2.0, resume_s=0.5, low_water_s=0.2)
    policy.retune(new)
    assert policy.config is new
    assert policy.state is BUFFERING  # retuning keeps the state
    assert policy.step(1.5, input_complete=False, has_audio_expected=True) is BUFFERING  # old start_s would play
    assert policy.step(2.0, input_complete=False, has_audio_expected=True) is PLAYING
    # The new low water pauses earlier than the old 0.
    assert policy.step(0.2, input_complete=False, has_audio_expected=True) is BUFFERING
    # And the new resume_s resumes.
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is PLAYING


def test_retune_to_lower_start_threshold_starts_a_waiting_request() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=3.0))
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is BUFFERING
    policy.retune(PrebufferConfig(start_s=0.5))
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PLAYING


def test_retune_without_resume_uses_the_new_start_for_resuming() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0, resume_s=0.2))
    policy.retune(PrebufferConfig(start_s=0.8))
    assert policy.config.effective_resume_s == 0.8
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PLAYING
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is BUFFERING  # the old 0.2 is gone
    assert policy.step(0.8, input_complete=False, has_audio_expected=True) is PLAYING


def test_config_property_is_the_one_given() -> None:
    cfg = PrebufferConfig(start_s=0.7)
    assert PrebufferPolicy(cfg).config is cfg


def test_repr_names_state_thresholds_and_counts() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.5, resume_s=0.5, low_water_s=0.25))
    assert repr(policy) == (
        "PrebufferPolicy(state=IDLE, start_s=1.5, resume_s=0.5, low_water_s=0.25, resuming=False, rebuffers=0)"
    )
    policy.step(2.0, input_complete=False, has_audio_expected=True)
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert repr(policy) == (
        "PrebufferPolicy(state=BUFFERING, start_s=1.5, resume_s=0.5, low_water_s=0.25, resuming=True, rebuffers=1)"
    )


@pytest.mark.parametrize("bad", ["0.5", [1.0], True])
def test_resume_threshold_must_be_a_number(bad: object) -> None:
    with pytest.raises(ValueError, match=r"PrebufferConfig\.resume_s must be a number of seconds"):
        PrebufferConfig(resume_s=bad)  # type: ignore[arg-type]
