"""The voice profile store's error paths (``actors.tts.voices``) on real files: reference audio
that needs resampling or is silent, profiles on disk that are broken in each way a reader can meet
(not a profile, malformed, unreadable, tensors missing, corrupt, of the wrong type), and a replace
with the real tiny XTTS model."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may be downloaded

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from actors.tts.base import file_sha256
from actors.tts.voices import (
    CHECKSUM_CACHE,
    PROFILE_FILE,
    PROFILE_FORMAT,
    PROFILE_VERSION,
    REF_SAMPLE_RATE,
    TENSORS_FILE,
    VoiceProfileError,
    VoiceProfileStore,
    default_voices_dir,
    load_reference_audio,
)
from config.settings import load_settings


def _tone(path: Path, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    mono = (amplitude * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    sf.write(path, np.stack([mono] * channels, axis=1) if channels > 1 else mono, rate)
    return path


def _write_profile(store: VoiceProfileStore, name: str, tensors: dict[str, np.ndarray] | None = None) -> Path:
    """A profile as ``add`` writes it, made by hand: the reader's side alone."""
    from safetensors.numpy import save_file

    path = store.dir / name
    path.mkdir(parents=True)
    tensors = tensors or {
        "gpt_cond_latent": np.zeros((1, 32, 4), np.float32),
        "speaker_embedding": np.ones((1, 512, 1), np.float32),
    }
    save_file(tensors, str(path / TENSORS_FILE))
    profile = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "name": name,
        "engine": "xtts",
        "sample_rate": 24000,
        "created": "2026-01-01T00:00:00Z",
        "model": {"dir": "/m", "model_sha256": "a" * 64},
        "refs": [],
        "tensors": {"file": TENSORS_FILE, "sha256": file_sha256(path / TENSORS_FILE)},
    }
    (path / PROFILE_FILE).write_text(json.dumps(profile))
    return path


def test_voices_dir_comes_from_settings_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"voices.dir": "~/my-voices"})
    assert default_voices_dir(settings) == Path.home() / "my-voices"
    assert VoiceProfileStore.from_settings(settings).dir == Path.home() / "my-voices"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_voices_dir() == tmp_path / "skald" / "voices"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_voices_dir() == Path.home() / ".local" / "share" / "skald" / "voices"
    assert VoiceProfileStore(tmp_path).checksum_cache == tmp_path / CHECKSUM_CACHE


def test_stereo_reference_audio_at_another_rate_is_resampled_to_mono(tmp_path: Path) -> None:
    ref = _tone(tmp_path / "stereo.wav", 1.0, 44100, channels=2)
    audio, info = load_reference_audio(ref)  # no max_seconds: the whole file
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - REF_SAMPLE_RATE) <= 2  # one second at 22.05 kHz
    assert (info.sample_rate, info.duration_s, info.file) == (44100, 1.0, str(ref.resolve()))
    assert info.sha256 == file_sha256(ref)
    cut, _ = load_reference_audio(ref, max_seconds=0.5)
    assert abs(len(cut) - REF_SAMPLE_RATE // 2) <= 2
    assert float(np.max(np.abs(cut))) == pytest.approx(0.5, abs=0.01)  # level kept through the resampler


def test_silent_reference_audio_is_refused(tmp_path: Path) -> None:
    silent = _tone(tmp_path / "silent.wav", 1.0, REF_SAMPLE_RATE, amplitude=0.0)
    with pytest.raises(VoiceProfileError, match=r"silent\.wav is silent"):
        load_reference_audio(silent)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is unreadable"),
        (json.dumps({"format": "something-else"}), "is not a skald voice profile"),
        (json.dumps([1, 2]), "is not a skald voice profile"),
        (
            json.dumps({"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "name": "n"}),
            "malformed profile \\(KeyError",
        ),
        (
            json.dumps(
                {
                    "format": PROFILE_FORMAT,
                    "version": PROFILE_VERSION,
                    "name": "n",
                    "engine": "x",
                    "sample_rate": "fast",
                    "created": "",
                    "refs": [],
                    "model": {},
                }
            ),
            "malformed profile \\(ValueError",
        ),
    ],
)
def test_a_broken_profile_file_is_named_by_get_and_skipped_by_list(tmp_path: Path, content: str, message: str) -> None:
    store = VoiceProfileStore(tmp_path)
    _write_profile(store, "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / PROFILE_FILE).write_text(content)
    with pytest.raises(VoiceProfileError, match=message):
        store.get("bad")
    assert [p.name for p in store.list()] == ["good"]


def test_unknown_and_invalid_names(tmp_path: Path) -> None:
    store = VoiceProfileStore(tmp_path / "none-yet")
    assert store.list() == []  # no directory yet: no profiles, no error
    assert not store.exists("../evil")  # an invalid name is simply not there
    with pytest.raises(VoiceProfileError, match="no voice profile 'ghost'"):
        store.get("ghost")


def test_missing_or_changed_tensors_say_re_add(tmp_path: Path) -> None:
    store = VoiceProfileStore(tmp_path)
    path = _write_profile(store, "v")
    assert store.load("v").speaker_embedding.shape == (1, 512, 1)
    with (path / TENSORS_FILE).open("ab") as f:
        f.write(b"\0")  # changed after it was stored: the checksum no longer matches
    with pytest.raises(VoiceProfileError, match=r"is missing or corrupt; re-add the voice"):
        store.load("v")
    (path / TENSORS_FILE).unlink()
    with pytest.raises(VoiceProfileError, match=r"is missing or corrupt; re-add the voice"):
        store.load("v")


def _set_checksum(path: Path) -> None:
    raw = json.loads((path / PROFILE_FILE).read_text())
    raw["tensors"]["sha256"] = file_sha256(path / TENSORS_FILE)
    (path / PROFILE_FILE).write_text(json.dumps(raw))


def test_a_tensors_file_that_is_not_safetensors_is_unreadable(tmp_path: Path) -> None:
    store = VoiceProfileStore(tmp_path)
    path = _write_profile(store, "v")
    (path / TENSORS_FILE).write_bytes(b"\xff" * 64)  # checksum updated: only the format is wrong
    _set_checksum(path)
    with pytest.raises(VoiceProfileError, match=r"is unreadable \(.*\); re-add the voice"):
        store.load("v")


def test_a_missing_tensor_and_a_wrong_dtype_are_refused(tmp_path: Path) -> None:
    store = VoiceProfileStore(tmp_path)
    _write_profile(store, "lacks", {"gpt_cond_latent": np.zeros((1, 32, 4), np.float32)})
    with pytest.raises(VoiceProfileError, match="lacks tensor 'speaker_embedding'; re-add the voice"):
        store.load("lacks")
    _write_profile(
        store,
        "half",
        {"gpt_cond_latent": np.zeros((1, 32, 4), np.float16), "speaker_embedding": np.ones((1, 512, 1), np.float32)},
    )
    with pytest.raises(VoiceProfileError, match="tensors are not float32; re-add the voice"):
        store.load("half")


@pytest.fixture(scope="module")
def xtts(xtts_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("TTS.tts.models.xtts", reason="the xtts extra (coqui-tts) is not installed")
    from actors.tts.xtts import XttsEngine

    eng = XttsEngine(xtts_tiny_dir, device="cpu", voices_dir=tmp_path_factory.mktemp("voices"), warmup=False)
    yield eng
    eng.close()


def test_add_refuses_an_existing_name_and_no_refs_then_replaces(xtts: object, tmp_path: Path) -> None:
    from actors.tts.xtts import XttsEngine

    assert isinstance(xtts, XttsEngine)
    store = VoiceProfileStore(tmp_path / "voices")
    first = store.add("v", [_tone(tmp_path / "a.wav", 1.0, 44100)], xtts)
    with pytest.raises(VoiceProfileError, match=r"already exists .*replace it or remove it first"):
        store.add("v", [_tone(tmp_path / "b.wav", 1.0, 44100)], xtts)
    with pytest.raises(VoiceProfileError, match="give at least one reference audio file"):
        store.add("w", [], xtts)
    second = store.add("v", [_tone(tmp_path / "b.wav", 1.5, 16000)], xtts, replace=True)
    assert [r.file for r in first.refs] == [str((tmp_path / "a.wav").resolve())]
    assert [(Path(r.file).name, r.sample_rate) for r in second.refs] == [("b.wav", 16000)]
    assert [p.name for p in store.list()] == ["v"]
    assert sorted(p.name for p in store.dir.iterdir()) == ["v"]  # no .adding-/.removing- leftovers
    assert store.load("v").speaker_embedding.shape == (1, 512, 1)
