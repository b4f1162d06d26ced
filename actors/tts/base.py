"""The engine interface every TTS backend implements (Piper now; XTTS drops in later).

An engine loads voices, reports their sample rate and speaking rate, and synthesizes one
chunk of text into float32 mono blocks. It checks the cancel token between blocks, so a
cancelled chunk stops after at most one block of work.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class EngineError(RuntimeError):
    """A voice could not be loaded or a chunk could not be synthesized."""


class CancelToken:
    """Set once, from any thread; polled by engines between blocks (``cancelled``) and by the
    language-model backends, which also register ``on_cancel`` callbacks that run at that
    moment (or at once if already set). Callbacks must be quick and must not raise (exceptions
    are logged)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logging.getLogger("skald.cancel").exception("cancel callback failed")

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout`` seconds passed; True if cancelled."""
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()


@dataclass(frozen=True)
class VoiceInfo:
    """What the worker needs to know about a loaded voice."""

    name: str
    engine: str
    sample_rate: int
    chars_per_s: float  # measured at load by synthesizing a calibration sentence


class TtsEngine(ABC):
    """A text-to-speech backend running inside the TTS worker process."""

    name: str = ""

    @abstractmethod
    def load_voice(self, voice: str) -> VoiceInfo:
        """Load (or return the already loaded) voice; raise ``EngineError`` naming what is missing."""

    @abstractmethod
    def list_voices(self) -> list[str]:
        """Names of the voices this engine can load."""

    @abstractmethod
    def synthesize(self, text: str, voice: str, cancel: CancelToken, speed: float = 1.0) -> Iterator[np.ndarray]:
        """Yield float32 mono blocks at the voice's sample rate; stop early once ``cancel`` is set.
        ``speed`` > 1 speaks faster (0.25-4.0), by the engine's own rate control."""

    def release_memory(self) -> None:  # noqa: B027 - optional hook; engines without a cache need not override
        """Hand back memory kept for reuse (an allocator arena); called where the worker waits anyway."""

    def close(self) -> None:  # noqa: B027 - optional hook; engines without resources need not override
        """Release models and sessions."""


CALIBRATION_TEXT = (
    "The lantern swung in the wind, and the old road bent toward the river, where the ferryman waited in silence."
)


def measure_chars_per_s(engine: TtsEngine, voice: str, sample_rate: int) -> float:
    """Speaking rate of ``voice`` in characters per second, from one real synthesis."""
    token = CancelToken()
    frames = sum(len(block) for block in engine.synthesize(CALIBRATION_TEXT, voice, token))
    if frames == 0:
        raise EngineError(f"voice {voice!r} produced no audio for the calibration sentence")
    return len(CALIBRATION_TEXT) / (frames / sample_rate)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (model weights, reference audio, profile tensors)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
