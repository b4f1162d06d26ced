"""TTS engines behind one interface (``actors.engines.base.TtsEngine``).

Engines are imported lazily so the audio consumer, which never synthesizes, never loads
onnxruntime or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.engines.base import CancelToken, EngineError, TtsEngine, VoiceInfo

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["CancelToken", "EngineError", "TtsEngine", "VoiceInfo", "create_engine", "engine_sample_rate"]

ENGINES = ("piper",)


def create_engine(name: str, settings: Settings | None = None) -> TtsEngine:
    """Build the engine called ``name``; ``EngineError`` lists the available ones."""
    if name == "piper":
        from actors.engines.piper_engine import PiperEngine

        if settings is None:
            return PiperEngine()
        tts = settings.tts
        return PiperEngine(
            noise_scale=tts.noise_scale if tts.noise_scale >= 0 else None,
            noise_w_scale=tts.noise_w_scale if tts.noise_w_scale >= 0 else None,
        )
    raise EngineError(f"unknown TTS engine {name!r}; available: {', '.join(ENGINES)}")


def engine_sample_rate(name: str, voice: str) -> int:
    """The output rate of ``voice`` without loading the model (the supervisor sizes the ring)."""
    if name == "piper":
        from actors.engines.piper_engine import voice_sample_rate

        return voice_sample_rate(voice)
    raise EngineError(f"unknown TTS engine {name!r}; available: {', '.join(ENGINES)}")
