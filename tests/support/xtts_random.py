"""Build the real XTTS v2 architecture (coqui-tts) with random weights, as a model directory.

Real XTTS v2 weights cannot be downloaded here, yet the engine, its tests and its benchmark
must run the real coqui-tts code path. This module writes a directory that ``XttsEngine``
loads exactly like a real one::

    OUT_DIR/config.json        XttsConfig (to_dict) + "skald_random_weights": true + "skald_random": {...}
    OUT_DIR/model.pth          {"model": state_dict, "config": ...} as coqui's load_checkpoint expects
    OUT_DIR/vocab.json         a BPE tokenizer trained here with the ``tokenizers`` library
    OUT_DIR/speakers_xtts.pth  {name: {"gpt_cond_latent", "speaker_embedding"}} like the real file

Run it: ``python -m tests.support.xtts_random --size tiny|full OUT_DIR``.

Sizes
    full   the XTTS v2 defaults (config.json of coqui/XTTS-v2): GPT 30 layers x 1024 wide, 16 heads,
           perceiver resampler, 1026 audio tokens, HiFiGAN decoder + ResNet speaker encoder.
    tiny   GPT 2 layers x 256 wide, 4 heads. The HiFiGAN decoder and the speaker encoder are
           fixed by coqui's ``HifiDecoder`` (only its input width follows the GPT), so they stay
           full size: on CPU the vocoder is most of a tiny model's time.

What is not like a real model
    * ``config.json`` carries ``"skald_random_weights": true``; every report then prints
      "random weights: timing only". The audio is noise-like; only timings mean something.
    * The GPT's stop-token logit is pinned very low (mel_head bias = -1e4), so generation
      never stops on its own: it always runs to the engine's length bound (see
      ``xtts_engine.MAX_TOKENS_PER_CHAR``). Left alone, random weights would sample the stop
      token now and then (~0.1 % per step) and make timings and tests flaky.
    * The vocabulary is trained on a few local texts, so it is smaller than the real 6681
      tokens (the text embedding is smaller; it is a lookup, so timing is unaffected).
    * ``mel_stats`` (reference-mel normalisation) stays at ones.

``cached_model_dir`` builds once per (size, seed, builder version, coqui-tts version) under a
cache root and reuses the build; tests point it at their session's tmp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BUILDER_VERSION = 1
RANDOM_MARK = "skald_random_weights"
SIZES = ("tiny", "full")

# config.json of coqui/XTTS-v2 (model_args and inference settings), the "full" size.
V2_MODEL_ARGS: dict[str, Any] = {
    "gpt_batch_size": 1,
    "enable_redaction": False,
    "kv_cache": True,
    "num_chars": 255,
    "gpt_max_audio_tokens": 605,
    "gpt_max_text_tokens": 402,
    "gpt_max_prompt_tokens": 70,
    "gpt_layers": 30,
    "gpt_n_model_channels": 1024,
    "gpt_n_heads": 16,
    "gpt_num_audio_tokens": 1026,
    "gpt_start_audio_token": 1024,
    "gpt_stop_audio_token": 1025,
    "gpt_code_stride_len": 1024,
    "gpt_use_masking_gt_prompt_approach": True,
    "gpt_use_perceiver_resampler": True,
    "input_sample_rate": 22050,
    "output_sample_rate": 24000,
    "output_hop_length": 256,
    "decoder_input_dim": 1024,
    "d_vector_dim": 512,
    "cond_d_vector_in_each_upsampling_layer": True,
    "duration_const": 102400,
}
V2_INFERENCE: dict[str, Any] = {
    "temperature": 0.75,
    "length_penalty": 1.0,
    "repetition_penalty": 5.0,
    "top_k": 50,
    "top_p": 0.85,
    "num_gpt_outputs": 1,
    "gpt_cond_len": 30,
    "gpt_cond_chunk_len": 4,
    "max_ref_len": 30,
    "sound_norm_refs": False,
}
SIZE_OVERRIDES: dict[str, dict[str, Any]] = {
    "full": {},
    "tiny": {"gpt_layers": 2, "gpt_n_model_channels": 256, "gpt_n_heads": 4, "decoder_input_dim": 256},
}
LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi")
# coqui's VoiceBpeTokenizer writes "[lang]" before the text and replaces spaces by [SPACE];
# Xtts.init_models reads [START] and [STOP] ids from the vocabulary. [STOP]=0 as in the real file.
SPECIAL_TOKENS = ("[STOP]", "[UNK]", "[SPACE]", "[START]", *(f"[{lang}]" for lang in LANGUAGES))
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()&%$/àâäçéèêëîïôöùûüñß"
SPEAKERS = {"random-low": 110.0, "random-high": 210.0}  # built-in speaker name -> f0 of its synthetic reference

_CORPUS = """
The lantern swung in the wind, and the old road bent toward the river, where the ferryman waited in silence.
She opened the door of the crypt and the cold air rolled out like water over the stones.
"Who goes there?" called the guard, lifting his torch; no one answered, only the rain.
In the morning the village woke to find the well dry, the bells silent and the gate standing open.
He counted the coins twice: forty-two silver pieces, three copper, and one that was not money at all.
The forest was older than the kingdom, older than the names of the stars the sailors used to steer by.
Quick brown foxes jump over lazy dogs; pack my box with five dozen liquor jugs!
"""


def _corpus() -> list[str]:
    texts = [_CORPUS]
    samples = Path(__file__).resolve().parents[2] / "config" / "samples"
    for path in sorted(samples.glob("*.txt")) if samples.is_dir() else []:
        texts.append(path.read_text(encoding="utf-8"))
    # Train on what the tokenizer will see: lower case, spaces as [SPACE] (see VoiceBpeTokenizer.encode).
    return [" ".join(t.lower().split()).replace(" ", "[SPACE]") for t in texts]


def build_vocab(path: Path, vocab_size: int) -> int:
    """Train a BPE vocabulary coqui's ``VoiceBpeTokenizer`` can load; returns its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # as in the real XTTS vocab.json
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.save(str(path))
    return int(tokenizer.get_vocab_size())


def _synthetic_voice(f0: float, seconds: float = 4.0, rate: int = 22050) -> Any:
    """A vowel-like harmonic signal with vibrato: something for the conditioning encoders to chew."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2
    return (0.25 * wave * envelope / np.max(np.abs(wave))).astype(np.float32)


def build_random_model(out_dir: str | os.PathLike[str], size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight XTTS v2 model directory of ``size`` ("tiny" or "full") to ``out_dir``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = build_vocab(out / "vocab.json", 6681 if size == "full" else 1024)

    args = XttsArgs(**{**V2_MODEL_ARGS, **SIZE_OVERRIDES[size]})
    config = XttsConfig(model_args=args, audio=XttsAudioConfig(), **V2_INFERENCE)
    torch.manual_seed(seed)
    model = Xtts(config)  # no tokenizer yet: builds only the decoder (cheap)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=str(out / "vocab.json"))
    model.init_models()  # now the GPT, sized from the vocabulary, with random weights
    stop = int(args.gpt_stop_audio_token)
    with torch.no_grad():
        model.gpt.mel_head.bias[stop] = -1e4  # random weights never stop: see the module docstring
    # The checkpoint holds the training-layout weights, as a real one: saved before Xtts.eval()
    # adds the inference wrapper (gpt.gpt_inference.*, gpt.gpt.wte).
    state = dict(model.state_dict())
    torch.nn.Module.train(model, False)  # plain eval mode for the conditioning encoders below

    speakers = {}
    with torch.inference_mode():
        for name, f0 in SPEAKERS.items():
            audio = torch.from_numpy(_synthetic_voice(f0))[None]
            latent = model.get_gpt_cond_latents(audio, 22050, length=config.gpt_cond_len, chunk_length=4)
            embedding = model.get_speaker_embedding(audio, 22050)
            speakers[name] = {"gpt_cond_latent": latent.clone(), "speaker_embedding": embedding.clone()}
    torch.save(speakers, out / "speakers_xtts.pth")

    config_dict = config.to_dict()
    config_dict["model_args"]["gpt_number_text_tokens"] = int(args.gpt_number_text_tokens)
    torch.save({"model": state, "config": config_dict}, out / "model.pth")

    import TTS

    config_dict[RANDOM_MARK] = True
    config_dict["skald_random"] = {
        "size": size,
        "seed": seed,
        "builder_version": BUILDER_VERSION,
        "coqui_tts": getattr(TTS, "__version__", "unknown"),
        "vocab_size": vocab_size,
        "stop_token_suppressed": True,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    return out


def _coqui_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coqui-tts")
    except PackageNotFoundError:
        return "unknown"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skald" / "xtts-random"


def cached_model_dir(size: str = "tiny", cache_root: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """A random model of ``size``, built once under ``cache_root`` and reused afterwards.

    The directory name carries the size, seed, builder version and coqui-tts version, so a
    changed builder or coqui-tts never reuses a stale build. A build goes to a temporary
    directory first and is renamed into place, so a killed build leaves nothing half-written.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / f"{size}-seed{seed}-b{BUILDER_VERSION}-coqui{_coqui_version()}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".building-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_random_model(tmp, size, seed)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.xtts_random",
        description="Write an XTTS v2 model directory with random weights (random weights: timing only).",
    )
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("out_dir", help="directory to write config.json, model.pth, vocab.json, speakers_xtts.pth")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = build_random_model(args.out_dir, args.size, args.seed)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    params = config["skald_random"]["parameters"]
    print(
        f"wrote {args.size} XTTS v2 (random weights: timing only) to {out}: {params / 1e6:.1f} M parameters, "
        f"speakers {', '.join(SPEAKERS)}, {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
