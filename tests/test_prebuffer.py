"""Tests for the pre-buffer state machine (actors/prebuffer.py)."""

from __future__ import annotations

import math

import pytest

from actors.audio.prebuffer import AdaptiveResume, PlaybackState, PrebufferConfig, PrebufferPolicy

IDLE, BUFFERING, PLAYING = PlaybackState.IDLE, PlaybackState.BUFFERING, PlaybackState.PLAYING


def playing_policy(config: PrebufferConfig | None = None) -> PrebufferPolicy:
    """A policy already in PLAYING (started from a buffer that met start_s)."""
    cfg = config or PrebufferConfig(start_s=1.0)
    policy = PrebufferPolicy(cfg)
    assert policy.step(cfg.start_s + 1.0, input_complete=False, has_audio_expected=True) is PLAYING
    return policy


# --- configuration ---------------------------------------------------------------------------------


def test_config_defaults() -> None:
    cfg = PrebufferConfig()
    assert (cfg.start_s, cfg.resume_s, cfg.low_water_s) == (1.0, None, 0.0)
    assert cfg.effective_resume_s == 1.0
    assert PrebufferConfig(start_s=2.0, resume_s=0.5).effective_resume_s == 0.5


@pytest.mark.parametrize(
    ("kwargs", "field", "value_text"),
    [
        ({"start_s": -0.1}, "start_s", "-0.1"),
        ({"low_water_s": -1.0}, "low_water_s", "-1.0"),
        ({"resume_s": -0.5}, "resume_s", "-0.5"),
        ({"start_s": math.nan}, "start_s", "nan"),
        ({"start_s": math.inf}, "start_s", "inf"),
        ({"start_s": 1.0, "low_water_s": 1.0}, "low_water_s", "1.0"),
        ({"start_s": 1.0, "low_water_s": 2.0}, "low_water_s", "2.0"),
        ({"start_s": 0.0, "low_water_s": 0.1}, "low_water_s", "0.1"),
        ({"start_s": 2.0, "resume_s": 0.5, "low_water_s": 0.5}, "low_water_s", "0.5"),
    ],
)
def test_config_validation_names_field_value_and_range(kwargs: dict[str, float], field: str, value_text: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        PrebufferConfig(**kwargs)
    message = str(excinfo.value)
    assert f"{field}=" in message
    assert value_text in message
    assert ">= 0" in message or "must be <" in message


def test_config_rejects_non_numbers() -> None:
    with pytest.raises(ValueError, match="start_s"):
        PrebufferConfig(start_s="1.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low_water_s"):
        PrebufferConfig(low_water_s=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_s": 0.0, "low_water_s": 0.0},
        {"start_s": 0.0, "resume_s": 0.0},
        {"start_s": 1.0, "low_water_s": 0.999},
        {"start_s": 3.0, "resume_s": 0.5, "low_water_s": 0.25},
        {"start_s": 1, "resume_s": 2, "low_water_s": 0},  # ints are accepted as seconds
    ],
)
def test_config_accepts_valid(kwargs: dict[str, float]) -> None:
    PrebufferConfig(**kwargs)


def test_config_is_frozen() -> None:
    cfg = PrebufferConfig()
    with pytest.raises(AttributeError):
        cfg.start_s = 2.0  # type: ignore[misc]


# --- decisions -------------------------------------------------------------------------------------


def test_should_start_exactly_at_threshold() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    assert not policy.should_start_playback(0.999999, input_complete=False)
    assert policy.should_start_playback(1.0, input_complete=False)
    assert policy.should_start_playback(1.000001, input_complete=False)


def test_should_start_with_complete_input_needs_only_some_audio() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=3.0))
    assert policy.should_start_playback(0.01, input_complete=True)
    assert not policy.should_start_playback(0.0, input_complete=True)


def test_should_start_never_on_empty_buffer_even_with_zero_threshold() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=0.0))
    assert not policy.should_start_playback(0.0, input_complete=False)
    assert policy.should_start_playback(1e-6, input_complete=False)


def test_should_pause_exactly_at_low_water() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0, low_water_s=0.25))
    assert not policy.should_pause_playback(0.250001, input_complete=False)
    assert policy.should_pause_playback(0.25, input_complete=False)
    assert policy.should_pause_playback(0.0, input_complete=False)
    # With the whole request synthesised, the buffer plays out instead of pausing.
    assert not policy.should_pause_playback(0.25, input_complete=True)
    assert not policy.should_pause_playback(0.0, input_complete=True)


def test_should_pause_zero_low_water_means_play_to_empty() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    assert not policy.should_pause_playback(1e-6, input_complete=False)
    assert policy.should_pause_playback(0.0, input_complete=False)


# --- transitions -----------------------------------------------------------------------------------


def test_initial_state_is_idle() -> None:
    policy = PrebufferPolicy(PrebufferConfig())
    assert policy.state is IDLE
    assert policy.rebuffer_count == 0


def test_idle_stays_idle_without_expected_audio() -> None:
    policy = PrebufferPolicy(PrebufferConfig())
    assert policy.step(0.0, input_complete=False, has_audio_expected=False) is IDLE
    # Stray buffered audio without an active request does not start anything.
    assert policy.step(5.0, input_complete=True, has_audio_expected=False) is IDLE


def test_idle_to_buffering_when_audio_expected() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is BUFFERING


def test_idle_to_playing_in_one_step_when_buffer_already_full() -> None:
    # The chained transition means the first block with enough audio plays at once.
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PLAYING


def test_buffering_to_playing_at_start_threshold() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.99, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PLAYING


def test_buffering_to_playing_when_input_complete_below_threshold() -> None:
    # A short request ("Yes.") never reaches start_s; it must still play.
    policy = PrebufferPolicy(PrebufferConfig(start_s=2.0))
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.3, input_complete=True, has_audio_expected=True) is PLAYING


def test_buffering_to_idle_when_request_produced_nothing() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.0, input_complete=True, has_audio_expected=True) is IDLE
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.0, input_complete=False, has_audio_expected=False) is IDLE


def test_buffering_with_no_more_expected_but_audio_left_plays_it() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=1.0))
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.2, input_complete=False, has_audio_expected=False) is PLAYING


def test_playing_stays_playing_above_low_water() -> None:
    policy = playing_policy(PrebufferConfig(start_s=1.0, low_water_s=0.2))
    assert policy.step(0.21, input_complete=False, has_audio_expected=True) is PLAYING
    assert policy.rebuffer_count == 0


def test_playing_to_buffering_on_underrun_counts_rebuffer() -> None:
    policy = playing_policy(PrebufferConfig(start_s=1.0))
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.rebuffer_count == 1


def test_playing_to_buffering_at_low_water_boundary() -> None:
    policy = playing_policy(PrebufferConfig(start_s=1.0, low_water_s=0.2))
    assert policy.step(0.2, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.rebuffer_count == 1


def test_playing_plays_out_to_empty_when_input_complete() -> None:
    policy = playing_policy(PrebufferConfig(start_s=1.0, low_water_s=0.5))
    # Below low water but complete: no pause, no rebuffer.
    assert policy.step(0.1, input_complete=True, has_audio_expected=True) is PLAYING
    assert policy.step(0.0, input_complete=True, has_audio_expected=True) is IDLE
    assert policy.rebuffer_count == 0


def test_playing_to_idle_when_no_more_expected_and_drained() -> None:
    policy = playing_policy()
    assert policy.step(0.0, input_complete=False, has_audio_expected=False) is IDLE
    assert policy.rebuffer_count == 0


def test_resume_threshold_distinct_from_start() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=2.0, resume_s=0.5))
    assert policy.start_threshold_s == 2.0
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is BUFFERING  # 0.5 < start_s
    assert policy.step(2.0, input_complete=False, has_audio_expected=True) is PLAYING
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING  # underrun
    assert policy.start_threshold_s == 0.5
    assert policy.step(0.49, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is PLAYING  # resume_s, exactly


def test_resume_threshold_larger_than_start() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=0.5, resume_s=1.5))
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is PLAYING
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(1.5, input_complete=False, has_audio_expected=True) is PLAYING


def test_resume_defaults_to_start() -> None:
    policy = playing_policy(PrebufferConfig(start_s=1.0))
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    assert policy.step(0.99, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PLAYING


def test_new_request_after_natural_end_uses_start_threshold_again() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=2.0, resume_s=0.5))
    policy.step(2.0, input_complete=False, has_audio_expected=True)
    policy.step(0.0, input_complete=False, has_audio_expected=True)  # underrun -> resume mode
    policy.step(0.5, input_complete=True, has_audio_expected=True)
    assert policy.step(0.0, input_complete=True, has_audio_expected=True) is IDLE
    assert policy.start_threshold_s == 2.0
    assert policy.step(0.5, input_complete=False, has_audio_expected=True) is BUFFERING


@pytest.mark.parametrize("buffered", [0.0, 0.7, 5.0])
def test_reset_from_every_state(buffered: float) -> None:
    cfg = PrebufferConfig(start_s=1.0, resume_s=0.5)
    # From IDLE.
    policy = PrebufferPolicy(cfg)
    policy.reset()
    assert policy.state is IDLE
    # From BUFFERING.
    policy.step(buffered if buffered < 1.0 else 0.0, input_complete=False, has_audio_expected=True)
    assert policy.state is BUFFERING
    policy.reset()
    assert policy.state is IDLE
    # From PLAYING, after an underrun (resume mode): reset goes back to start_s.
    policy.step(1.0, input_complete=False, has_audio_expected=True)
    policy.step(0.0, input_complete=False, has_audio_expected=True)
    policy.step(1.0, input_complete=False, has_audio_expected=True)
    assert policy.state is PLAYING
    policy.reset()
    assert policy.state is IDLE
    assert policy.start_threshold_s == 1.0
    # The rebuffer counter is cumulative (a metric), not per request.
    assert policy.rebuffer_count == 1


def test_rebuffer_count_accumulates() -> None:
    policy = playing_policy(PrebufferConfig(start_s=0.5))
    for expected in range(1, 4):
        policy.step(0.0, input_complete=False, has_audio_expected=True)
        assert policy.rebuffer_count == expected
        policy.step(0.5, input_complete=False, has_audio_expected=True)
    # BUFFERING -> BUFFERING and PLAYING -> IDLE never count.
    policy.step(0.0, input_complete=True, has_audio_expected=True)
    assert policy.rebuffer_count == 3


def test_zero_thresholds_play_as_soon_as_audio_arrives() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=0.0))
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.step(0.001, input_complete=False, has_audio_expected=True) is PLAYING
    assert policy.step(0.0, input_complete=False, has_audio_expected=True) is BUFFERING
    assert policy.rebuffer_count == 1


def simulate(
    config: PrebufferConfig, chunk_s: float, chunk_every_blocks: int, total_s: float, block_s: float = 0.02
) -> tuple[PrebufferPolicy, float, list[PlaybackState]]:
    """Drive the policy like the output callback does, block by block.

    The producer adds ``chunk_s`` of audio every ``chunk_every_blocks`` blocks (a sentence at a time,
    like the synthesiser).  Each block the callback steps the policy with the buffer level *before*
    consuming, then plays up to one block.  Returns (policy, seconds played, states per block).
    """
    policy = PrebufferPolicy(config)
    buffered = produced = played = 0.0
    states: list[PlaybackState] = []
    for n in range(100_000):
        if n % chunk_every_blocks == 0 and produced < total_s - 1e-9:
            add = min(chunk_s, total_s - produced)
            produced += add
            buffered += add
        state = policy.step(buffered, input_complete=produced >= total_s - 1e-9, has_audio_expected=True)
        states.append(state)
        if state is PLAYING:
            take = min(block_s, buffered)
            buffered -= take
            played += take
        elif state is IDLE:
            break
    return policy, played, states


def test_simulated_stream_with_slow_synthesis() -> None:
    # 0.8 s sentences every 1.0 s = synthesis at 0.8x real time: playback must stall and rebuffer.
    policy, played, states = simulate(PrebufferConfig(start_s=1.0, resume_s=0.5), 0.8, 50, total_s=6.0)
    assert math.isclose(played, 6.0, abs_tol=1e-6)
    assert policy.state is IDLE
    assert states[0] is BUFFERING
    assert policy.rebuffer_count >= 1


def test_simulated_stream_with_fast_synthesis_never_rebuffers() -> None:
    # 0.8 s sentences every 0.5 s (1.6x real time): once started, the buffer only grows.
    policy, played, _ = simulate(PrebufferConfig(start_s=1.0), 0.8, 25, total_s=6.0)
    assert math.isclose(played, 6.0, abs_tol=1e-6)
    assert policy.rebuffer_count == 0


def test_trickle_underrun_needs_low_water_of_one_block() -> None:
    # A producer that trickles in less than a block per block never leaves the buffer exactly empty
    # when the policy looks, so low_water_s=0 keeps PLAYING through partial (audible) blocks.
    # Setting low_water_s to one block's duration turns that into a proper rebuffer.
    policy, _, _ = simulate(PrebufferConfig(start_s=1.0), chunk_s=0.016, chunk_every_blocks=1, total_s=8.0)
    assert policy.rebuffer_count == 0
    policy, played, _ = simulate(
        PrebufferConfig(start_s=1.0, low_water_s=0.02), chunk_s=0.016, chunk_every_blocks=1, total_s=8.0
    )
    assert policy.rebuffer_count >= 1
    assert math.isclose(played, 8.0, abs_tol=1e-6)


# --- tier table ------------------------------------------------------------------------------------

# Start decision for each pre-buffer tier (rows) at a given buffered amount (columns), input still
# streaming.  "S" = start playback, "." = keep buffering.
BUFFERED_COLUMNS = (0.25, 0.49, 0.5, 0.99, 1.0, 1.5, 1.99, 2.0, 2.99, 3.0, 4.0)
TIER_TABLE = {
    # tier_s: decisions for BUFFERED_COLUMNS
    0.5: "..SSSSSSSSS",
    1.0: "....SSSSSSS",
    2.0: ".......SSSS",
    3.0: ".........SS",
}


@pytest.mark.parametrize("tier_s", sorted(TIER_TABLE))
def test_tier_threshold_table(tier_s: float) -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=tier_s))
    row = "".join("S" if policy.should_start_playback(b, input_complete=False) else "." for b in BUFFERED_COLUMNS)
    assert row == TIER_TABLE[tier_s]
    # Once the request is fully synthesised every tier starts on any buffered audio.
    assert all(policy.should_start_playback(b, input_complete=True) for b in BUFFERED_COLUMNS)
    assert not policy.should_start_playback(0.0, input_complete=True)


@pytest.mark.parametrize("tier_s", sorted(TIER_TABLE))
def test_tier_step_starts_in_the_block_that_reaches_the_tier(tier_s: float) -> None:
    # 22050 Hz, 512-frame blocks arriving one per block: the start block is the first whose total
    # reaches tier_s (float seconds computed from integer frames, as the real caller does).
    rate, block = 22050, 512
    policy = PrebufferPolicy(PrebufferConfig(start_s=tier_s))
    blocks = 0
    while policy.state is not PLAYING:
        blocks += 1
        policy.step(blocks * block / rate, input_complete=False, has_audio_expected=True)
    assert blocks == math.ceil(tier_s * rate / block)


# --- adaptive resume threshold (prebuffer.adaptive) ---------------------------------------------------


def test_each_underrun_doubles_the_resume_threshold_up_to_the_bound() -> None:
    adaptive = AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=60.0)
    assert [adaptive.on_underrun(t) for t in (10.0, 11.0, 12.0, 13.0)] == [1.0, 2.0, 3.0, None]
    assert adaptive.current_s == 3.0  # at the bound: a fourth underrun changes nothing
    assert adaptive.history == [(10.0, 1.0), (11.0, 2.0), (12.0, 3.0)]


def test_calm_stretches_step_the_threshold_back_to_the_configured_one() -> None:
    adaptive = AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=60.0)
    adaptive.on_underrun(0.0)
    adaptive.on_underrun(1.0)  # 2.0 s
    assert adaptive.tick(60.9) is None  # not yet a calm stretch since the last underrun
    assert adaptive.tick(61.0) == 1.25  # half-way back
    assert adaptive.tick(100.0) is None  # the next step needs a stretch of its own
    steps = [adaptive.tick(61.0 + 60.0 * n) for n in range(1, 9)]
    # Within 10 ms of the base it lands on the base exactly, then rests.
    assert steps == [0.875, 0.6875, 0.5938, 0.5469, 0.5234, 0.5117, 0.5, None]
    assert adaptive.tick(10_000.0) is None


def test_an_underrun_during_the_decay_grows_from_where_it_was() -> None:
    adaptive = AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=10.0)
    adaptive.on_underrun(0.0)
    adaptive.on_underrun(1.0)
    assert adaptive.tick(11.0) == 1.25
    assert adaptive.on_underrun(12.0) == 2.5
    assert adaptive.tick(21.0) is None  # the calm stretch restarted at the underrun


def test_a_zero_base_grows_from_a_floor_and_the_bound_never_undercuts_the_base() -> None:
    assert AdaptiveResume(base_s=0.0, max_s=3.0, calm_s=1.0).on_underrun(0.0) == 0.1
    fixed = AdaptiveResume(base_s=1.0, max_s=0.5, calm_s=1.0)  # a bound below the base: no growth
    assert fixed.on_underrun(0.0) is None and fixed.current_s == 1.0
    with pytest.raises(ValueError, match="calm_s"):
        AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=0.0)


def test_new_settings_keep_the_learned_threshold_inside_them() -> None:
    adaptive = AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=60.0)
    adaptive.on_underrun(0.0)
    adaptive.on_underrun(1.0)  # 2.0 s
    adaptive.rebase(base_s=0.5, max_s=1.5)
    assert adaptive.current_s == 1.5  # learned 1.0 s over the base; the new bound caps it
    adaptive.rebase(base_s=0.2, max_s=3.0)
    assert adaptive.current_s == 1.2
    fresh = AdaptiveResume(base_s=0.5, max_s=3.0, calm_s=60.0)
    fresh.rebase(base_s=0.2, max_s=3.0)
    assert fresh.current_s == 0.2  # nothing learned: the new base itself
