"""Voice profiles: XTTS conditioning computed once from real speech, stored, reloaded unchanged.

The model is the tiny random-weight XTTS v2 (random weights: timing only); the reference
recordings are real speech synthesized with Piper.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may be downloaded

import argparse
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("TTS.tts.models.xtts", reason="the xtts extra (coqui-tts) is not installed")

from actors.cli.voice import add_voice_parser, run_voice_command
from actors.tts import EngineError
from actors.tts.voices import (
    PROFILE_FORMAT,
    PROFILE_VERSION,
    VoiceProfileError,
    VoiceProfileStore,
    load_reference_audio,
    validate_voice_name,
)
from actors.tts.xtts import XttsEngine
from config.settings import load_settings


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two reference recordings of real speech, made with Piper."""
    import soundfile as sf

    from actors.tts.base import CancelToken
    from actors.tts.piper import PiperEngine

    piper = PiperEngine(noise_scale=0.0, noise_w_scale=0.0)
    info = piper.load_voice("")
    out = tmp_path_factory.mktemp("refs")
    paths = []
    for i, text in enumerate(
        (
            "The ferryman waited by the river, listening to the rain on the water.",
            "She lit the lantern, opened the heavy door, and stepped into the dark.",
        )
    ):
        audio = np.concatenate(list(piper.synthesize(text, info.name, CancelToken())))
        path = out / f"ref{i}.wav"
        sf.write(path, audio, info.sample_rate)
        paths.append(path)
    piper.close()
    return paths


@pytest.fixture(scope="module")
def engine(xtts_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[XttsEngine]:
    eng = XttsEngine(xtts_tiny_dir, device="cpu", voices_dir=tmp_path_factory.mktemp("voices"), warmup=False)
    yield eng
    eng.close()


def test_profile_round_trip(engine: XttsEngine, refs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.voices_dir is not None
    store = VoiceProfileStore(engine.voices_dir)
    profile = store.add("narrator", refs, engine)
    raw = json.loads((profile.path / "profile.json").read_text())
    assert (raw["format"], raw["version"]) == (PROFILE_FORMAT, PROFILE_VERSION)
    assert (raw["engine"], raw["sample_rate"]) == ("xtts", 24000)
    assert raw["model"]["model_sha256"] == hashlib.sha256((engine.model_dir / "model.pth").read_bytes()).hexdigest()
    assert raw["model"]["random_weights"] is True
    assert [r["sha256"] for r in raw["refs"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in refs]
    assert [p.name for p in store.list()] == ["narrator"]

    stored = VoiceProfileStore(store.dir).load("narrator", model_sha256=engine.identity["model_sha256"])
    assert stored.gpt_cond_latent.dtype == np.float32 and stored.gpt_cond_latent.shape == (1, 32, 256)
    assert stored.speaker_embedding.shape == (1, 512, 1)
    again = store.load("narrator")
    np.testing.assert_array_equal(stored.gpt_cond_latent, again.gpt_cond_latent)
    np.testing.assert_array_equal(stored.speaker_embedding, again.speaker_embedding)
    # What was stored is what the model computes from the same audio.
    latent, embedding = engine.compute_conditioning([load_reference_audio(p, engine.max_ref_seconds)[0] for p in refs])
    np.testing.assert_allclose(stored.gpt_cond_latent, latent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored.speaker_embedding, embedding, rtol=1e-5, atol=1e-6)

    # The engine loads the stored tensors and never recomputes them.
    def no_recompute(*args: object) -> None:
        raise AssertionError("conditioning recomputed")

    monkeypatch.setattr(engine, "compute_conditioning", no_recompute)
    info = engine.load_voice("narrator")
    assert (info.name, info.sample_rate) == ("narrator", 24000)
    loaded_latent, loaded_embedding = engine._conditioning["narrator"]
    np.testing.assert_array_equal(loaded_latent.cpu().numpy(), stored.gpt_cond_latent)
    np.testing.assert_array_equal(loaded_embedding.cpu().numpy(), stored.speaker_embedding)
    assert "narrator" in engine.list_voices() and "random-low" in engine.list_voices()


def test_profile_of_other_weights_is_refused(engine: XttsEngine, refs: list[Path], tmp_path: Path) -> None:
    store = VoiceProfileStore(tmp_path / "voices")
    profile = store.add("other", refs[:1], engine)
    with pytest.raises(VoiceProfileError, match=r"other XTTS weights.*skald voice add other ref0\.wav"):
        store.load("other", model_sha256="0" * 64)
    raw = json.loads((profile.path / "profile.json").read_text())
    raw["model"]["model_sha256"] = "f" * 64
    (profile.path / "profile.json").write_text(json.dumps(raw))
    on_this_store = XttsEngine(engine.model_dir, device="cpu", voices_dir=store.dir, warmup=False)
    with pytest.raises(EngineError, match="re-add"):
        on_this_store.load_voice("other")
    on_this_store.close()
    raw["version"] = PROFILE_VERSION + 1
    (profile.path / "profile.json").write_text(json.dumps(raw))
    with pytest.raises(VoiceProfileError, match="format version"):
        store.load("other")


def test_names_and_reference_audio_are_checked(engine: XttsEngine, refs: list[Path], tmp_path: Path) -> None:
    for bad in ("", "../evil", "a/b", ".hidden", "x" * 65, "sp ace"):
        with pytest.raises(VoiceProfileError, match="invalid voice name"):
            validate_voice_name(bad)
    store = VoiceProfileStore(tmp_path / "voices")
    with pytest.raises(VoiceProfileError, match="invalid voice name"):
        store.add("../evil", refs, engine)
    with pytest.raises(VoiceProfileError, match=r"missing\.wav does not exist"):
        store.add("x", [tmp_path / "missing.wav"], engine)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all")
    with pytest.raises(VoiceProfileError, match=r"notes\.wav cannot be read"):
        store.add("x", [not_audio], engine)
    import soundfile as sf

    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(2205, dtype=np.float32), 22050)
    with pytest.raises(VoiceProfileError, match=r"0\.10 s long"):
        store.add("x", [short], engine)
    with pytest.raises(VoiceProfileError, match="no voice profile"):
        store.remove("x")
    assert store.list() == [] and not (tmp_path / "evil").exists()


def test_voice_cli_add_list_remove(
    xtts_tiny_dir: Path, refs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="skald")
    add_voice_parser(parser.add_subparsers(dest="command", required=True))
    settings = load_settings(env={}).replace(
        {"xtts.model_dir": str(xtts_tiny_dir), "xtts.device": "cpu", "voices.dir": str(tmp_path / "voices")}
    )

    def run(*argv: str) -> int:
        return run_voice_command(parser.parse_args(["voice", *argv]), settings)

    assert run("add", "bard", *map(str, refs)) == 0
    assert "added XTTS voice 'bard': 2 reference(s)" in capsys.readouterr().out
    assert run("add", "bard", str(refs[0])) == 1
    assert "already exists" in capsys.readouterr().err
    assert run("list") == 0
    out = capsys.readouterr().out
    assert "bard" in out and "ref0.wav, ref1.wav" in out and "en_US-joe-medium" in out and "piper" in out
    assert run("list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"name": "bard", "engine": "xtts", "sample_rate": 24000}.items() <= rows[0].items()
    assert any(r["engine"] == "piper" and r["sample_rate"] == 22050 for r in rows)
    assert run("remove", "bard") == 0
    assert run("remove", "bard") == 1
    assert "no voice profile 'bard'" in capsys.readouterr().err
    assert run("add", "ghost", str(tmp_path / "nope.wav")) == 1
    assert "nope.wav does not exist" in capsys.readouterr().err
