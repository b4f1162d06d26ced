"""Voice profiles: XTTS speaker conditioning computed once from reference audio, stored, reloaded.

Computing a voice's conditioning (GPT latents + speaker embedding) takes the model's encoders
over seconds of reference audio; a profile stores the result so a voice loads in milliseconds
and is never recomputed. ``skald voice add|list|remove`` is the command line over this store.

Store layout (``voices.dir``; default ``$XDG_DATA_HOME/skald/voices``, else
``~/.local/share/skald/voices``)::

    <dir>/<name>/profile.json               metadata, below
    <dir>/<name>/conditioning.safetensors   gpt_cond_latent float32 [1, 32, W], speaker_embedding float32 [1, 512, 1]
    <dir>/.model-checksums.json             cache of model.pth SHA-256 by (path, size, mtime)

``profile.json`` (format version 1)::

    {"format": "skald-voice-profile", "version": 1, "name": "narrator", "engine": "xtts",
     "sample_rate": 24000, "created": "2025-01-31T12:00:00Z",
     "model": {"dir": ..., "model_sha256": ..., "model_bytes": ..., "config_sha256": ..., "random_weights": false},
     "refs": [{"file": "/abs/ref1.wav", "sha256": ..., "duration_s": 6.2, "sample_rate": 44100}],
     "conditioning": {"sample_rate": 22050, "gpt_cond_len": 30, "gpt_cond_chunk_len": 4, "max_ref_len": 30},
     "tensors": {"file": "conditioning.safetensors", "sha256": ...,
                 "gpt_cond_latent": [1, 32, 1024], "speaker_embedding": [1, 512, 1]}}

Tensors are safetensors (no pickle, nothing executable on load), read through numpy so this
module never imports torch. ``load`` refuses a profile made with other model weights
(``model_sha256`` differs) and says to re-add the voice; a reader meets a newer format
version with an error naming it, never a guess. Writes go to a temporary directory renamed
into place, so a crash never leaves half a profile.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from actors.tts.base import file_sha256

if TYPE_CHECKING:
    from config.settings import Settings

PROFILE_FORMAT = "skald-voice-profile"
PROFILE_VERSION = 1
PROFILE_FILE = "profile.json"
TENSORS_FILE = "conditioning.safetensors"
CHECKSUM_CACHE = ".model-checksums.json"
REF_SAMPLE_RATE = 22050  # XTTS computes conditioning at 22.05 kHz
MIN_REF_SECONDS = 0.5  # shorter files are refused (XTTS ignores GPT chunks under 0.33 s)
SUGGESTED_REF_SECONDS = 6.0  # below this in total, `voice add` warns: cloning gets worse
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class VoiceProfileError(ValueError):
    """A profile name, file or reference audio is invalid, or a profile does not fit the model."""


class ConditioningEngine(Protocol):
    """What ``VoiceProfileStore.add`` needs from an engine (``XttsEngine`` is one)."""

    name: str
    sample_rate: int

    @property
    def identity(self) -> dict[str, Any]: ...

    @property
    def max_ref_seconds(self) -> float: ...

    def compute_conditioning(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class RefAudio:
    """One reference recording a profile was made from."""

    file: str
    sha256: str
    duration_s: float
    sample_rate: int


@dataclass(frozen=True)
class VoiceProfile:
    """A profile's metadata (``profile.json``), without its tensors."""

    name: str
    engine: str
    sample_rate: int
    created: str
    refs: tuple[RefAudio, ...]
    model: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class VoiceConditioning:
    """A profile's tensors, as stored (float32)."""

    profile: VoiceProfile
    gpt_cond_latent: np.ndarray
    speaker_embedding: np.ndarray


def default_voices_dir(settings: Settings | None = None) -> Path:
    """``voices.dir`` if set, else ``$XDG_DATA_HOME/skald/voices`` or ``~/.local/share/skald/voices``."""
    if settings is not None and settings.voices.dir:
        return Path(settings.voices.dir).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "skald" / "voices"


def validate_voice_name(name: str) -> str:
    """A profile name is also a directory name: letters, digits, ``_ . -``, at most 64, no leading dot."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VoiceProfileError(
            f"invalid voice name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def load_reference_audio(path: str | os.PathLike[str], max_seconds: float | None = None) -> tuple[np.ndarray, RefAudio]:
    """Mono float32 at 22.05 kHz (clipped to [-1, 1], cut to ``max_seconds``) and its ``RefAudio``."""
    import soundfile as sf
    import soxr

    file = Path(path).expanduser()
    if not file.is_file():
        raise VoiceProfileError(f"reference audio {file} does not exist")
    try:
        audio, rate = sf.read(str(file), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as exc:
        raise VoiceProfileError(
            f"reference audio {file} cannot be read ({exc}); use WAV, FLAC or OGG, mono or stereo"
        ) from None
    duration = len(audio) / rate if rate else 0.0
    if duration < MIN_REF_SECONDS:
        raise VoiceProfileError(
            f"reference audio {file} is {duration:.2f} s long; give at least {MIN_REF_SECONDS} s "
            f"(about {SUGGESTED_REF_SECONDS:.0f} s of clean speech clones best)"
        )
    mono = audio.mean(axis=1)
    if max_seconds is not None and max_seconds > 0:
        mono = mono[: int(max_seconds * rate)]
    if rate != REF_SAMPLE_RATE:
        mono = soxr.resample(mono, rate, REF_SAMPLE_RATE, quality="HQ")
    mono = np.clip(np.nan_to_num(mono), -1.0, 1.0).astype(np.float32)
    if not np.any(np.abs(mono) > 1e-4):
        raise VoiceProfileError(f"reference audio {file} is silent")
    return mono, RefAudio(str(file.resolve()), file_sha256(file), round(duration, 3), int(rate))


def _parse_profile(path: Path, data: Any) -> VoiceProfile:
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise VoiceProfileError(f"{path} is not a skald voice profile")
    version = data.get("version")
    if version != PROFILE_VERSION:
        raise VoiceProfileError(
            f"{path}: profile format version {version!r}; this skald reads version {PROFILE_VERSION} "
            "(re-add the voice with this skald: skald voice add NAME REF.wav ...)"
        )
    try:
        refs = tuple(
            RefAudio(str(ref["file"]), str(ref["sha256"]), float(ref["duration_s"]), int(ref["sample_rate"]))
            for ref in data["refs"]
        )
        return VoiceProfile(
            name=str(data["name"]),
            engine=str(data["engine"]),
            sample_rate=int(data["sample_rate"]),
            created=str(data["created"]),
            refs=refs,
            model=dict(data["model"]),
            path=path.parent,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VoiceProfileError(f"{path}: malformed profile ({type(exc).__name__}: {exc})") from None


class VoiceProfileStore:
    """Profiles in one directory, one subdirectory per voice (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory).expanduser()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> VoiceProfileStore:
        return cls(default_voices_dir(settings))

    @property
    def checksum_cache(self) -> Path:
        return self.dir / CHECKSUM_CACHE

    def _profile_dir(self, name: str) -> Path:
        return self.dir / validate_voice_name(name)

    def exists(self, name: str) -> bool:
        try:
            return (self._profile_dir(name) / PROFILE_FILE).is_file()
        except VoiceProfileError:
            return False

    def get(self, name: str) -> VoiceProfile:
        path = self._profile_dir(name) / PROFILE_FILE
        if not path.is_file():
            raise VoiceProfileError(f"no voice profile {name!r} in {self.dir}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VoiceProfileError(f"{path} is unreadable: {exc}") from None
        return _parse_profile(path, data)

    def list(self) -> list[VoiceProfile]:
        """Every readable profile, by name; unreadable ones are skipped (``get`` names the problem)."""
        if not self.dir.is_dir():
            return []
        found = []
        for entry in sorted(self.dir.iterdir()):
            if entry.is_dir() and _NAME.fullmatch(entry.name) and (entry / PROFILE_FILE).is_file():
                try:
                    found.append(self.get(entry.name))
                except VoiceProfileError:
                    continue
        return found

    def add(
        self,
        name: str,
        ref_wavs: Sequence[str | os.PathLike[str]],
        engine: ConditioningEngine,
        *,
        replace: bool = False,
    ) -> VoiceProfile:
        """Compute ``engine``'s conditioning from ``ref_wavs`` once and store it as profile ``name``."""
        from safetensors.numpy import save_file

        final = self._profile_dir(name)
        if (final / PROFILE_FILE).is_file() and not replace:
            raise VoiceProfileError(f"voice {name!r} already exists in {self.dir}; replace it or remove it first")
        if not ref_wavs:
            raise VoiceProfileError("give at least one reference audio file")
        loaded = [load_reference_audio(path, engine.max_ref_seconds) for path in ref_wavs]
        latent, embedding = engine.compute_conditioning([audio for audio, _ in loaded])
        tensors = {
            "gpt_cond_latent": np.ascontiguousarray(latent, dtype=np.float32),
            "speaker_embedding": np.ascontiguousarray(embedding, dtype=np.float32),
        }
        identity = dict(engine.identity)
        config: dict[str, Any] = {}
        model_config = Path(str(identity.get("dir", ""))) / "config.json"
        if model_config.is_file():
            raw = json.loads(model_config.read_text(encoding="utf-8"))
            config = {k: raw.get(k) for k in ("gpt_cond_len", "gpt_cond_chunk_len", "max_ref_len", "sound_norm_refs")}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".adding-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": PROFILE_FORMAT, "name": name})
            profile = {
                "format": PROFILE_FORMAT,
                "version": PROFILE_VERSION,
                "name": name,
                "engine": engine.name,
                "sample_rate": int(engine.sample_rate),
                "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "model": identity,
                "refs": [ref.__dict__ for _, ref in loaded],
                "conditioning": {"sample_rate": REF_SAMPLE_RATE, **config},
                "tensors": {
                    "file": TENSORS_FILE,
                    "sha256": file_sha256(tmp / TENSORS_FILE),
                    **{key: list(value.shape) for key, value in tensors.items()},
                },
            }
            (tmp / PROFILE_FILE).write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
            if final.exists():
                old = self.dir / f".removing-{name}-{os.getpid()}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(name)

    def load(self, name: str, model_sha256: str | None = None) -> VoiceConditioning:
        """The stored tensors of ``name``; never recomputed. With ``model_sha256``, a profile made
        with other weights is refused with a message telling to re-add the voice."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        profile = self.get(name)
        made_with = profile.model.get("model_sha256")
        if model_sha256 is not None and made_with != model_sha256:
            refs = " ".join(Path(r.file).name for r in profile.refs) or "REF.wav"
            raise VoiceProfileError(
                f"voice {name!r} was made with other XTTS weights (model.pth sha256 {str(made_with)[:12]}... in "
                f"{profile.model.get('dir', '?')}; loaded: {model_sha256[:12]}...). Its conditioning does not fit "
                f"this model: re-add it with: skald voice remove {name} && skald voice add {name} {refs}"
            )
        raw = json.loads((profile.path / PROFILE_FILE).read_text(encoding="utf-8"))
        tensors_file = profile.path / TENSORS_FILE
        expected = raw.get("tensors", {}).get("sha256")
        if not tensors_file.is_file() or (expected and file_sha256(tensors_file) != expected):
            raise VoiceProfileError(f"voice {name!r}: {tensors_file} is missing or corrupt; re-add the voice")
        try:
            tensors = load_file(str(tensors_file))
        except (SafetensorError, OSError) as exc:
            raise VoiceProfileError(f"voice {name!r}: {tensors_file} is unreadable ({exc}); re-add the voice") from None
        try:
            latent, embedding = tensors["gpt_cond_latent"], tensors["speaker_embedding"]
        except KeyError as exc:
            raise VoiceProfileError(f"voice {name!r}: {tensors_file} lacks tensor {exc}; re-add the voice") from None
        if latent.dtype != np.float32 or embedding.dtype != np.float32:
            raise VoiceProfileError(f"voice {name!r}: tensors are not float32; re-add the voice")
        return VoiceConditioning(profile, latent, embedding)

    def remove(self, name: str) -> None:
        path = self._profile_dir(name)
        if not (path / PROFILE_FILE).is_file():
            raise VoiceProfileError(f"no voice profile {name!r} in {self.dir}")
        shutil.rmtree(path)
