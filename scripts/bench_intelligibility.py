"""Intelligibility: what an independent recognizer hears from skald's speech vs raw Piper's.

    scripts/bench intelligibility [--json PATH] [--raw-runs N] [--piper-streaming]

For each sample text in ``tests/data`` (with its spoken-form reference ``*.ref.txt``):

* **skald**: the text goes through skald's text room exactly as the worker runs it (text
  preparation, the normalizer, the semantic chunker: ``SemanticChunker``), each planned chunk is
  synthesized by the real Piper engine skald uses (``PiperEngine``, the bundled voice), and the
  chunks are joined with the pause the joiner keeps at each boundary kind;
* **raw Piper**: the same text handed whole to piper-tts (``PiperVoice.synthesize``), as a user
  of Piper alone would, ``--raw-runs`` times (Piper samples noise, so runs differ).

With ``--piper-streaming``, a third: **skald streaming**, the same text room with the streaming
engine's chunk rule (the first chunk a whole sentence: ``ChunkerConfig.from_settings(...,
streaming=True)``) and each chunk synthesized by ``StreamingPiperEngine`` (its windows joined,
the calibrated profile in skald's cache when there is one), against whole-chunk skald.

All recordings are resampled to 16 kHz and transcribed by PocketSphinx (its PyPI wheel bundles
the US English acoustic model, language model and dictionary; nothing is downloaded) in the same
way, one utterance per sentence-sized stretch between silences. The word error rate is against
the reference: lowercased, punctuation dropped, hyphens as spaces. PocketSphinx is not what skald
uses anywhere, so it judges the audio, not skald's own view of it.

Samples: ``narration-plain`` (ordinary narration, nothing to normalize: skald must not be worse
than raw Piper beyond sampling noise) and ``normalization`` (numbers, titles, dice, units …: skald
should be clearly better). Figures, not pass/fail; the acceptance bounds of the issue are printed
beside them.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data"
SAMPLES = ("narration-plain", "normalization")
# Silence between chunks, by what ended the chunk (close to what the joiner keeps: a sentence end
# pauses longer than a clause). The recognizer only needs the words to be where they are.
PAUSE_S = {"sentence": 0.3, "clause": 0.15, "conjunction": 0.08, "word": 0.05, "voice": 0.2, "end": 0.0}
ASR_RATE = 16000
# The recognizer's dictionary writes a few words as abbreviations ("dr" is pronounced "doctor"):
# spelled out, for both pipelines alike, so a word heard right counts as right.
_SPELLED = {"dr": "doctor", "mr": "mister", "mrs": "missus", "st": "saint"}


def words(text: str) -> list[str]:
    """Text as recognizer words: lowercase, hyphens and dashes as spaces, other punctuation gone."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[-–—/]", " ", text)
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def wer(ref: list[str], hyp: list[str]) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


class Recognizer:
    """PocketSphinx with its bundled US English model, decoding 16 kHz mono int16."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")

    def transcribe(self, audio: np.ndarray, rate: int) -> list[str]:
        import soxr

        pcm = soxr.resample(audio.astype(np.float32), rate, ASR_RATE)
        pcm16 = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
        out: list[str] = []
        for start, end in _utterances(pcm16):
            self._decoder.start_utt()
            self._decoder.process_raw(pcm16[start:end].tobytes(), full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            if hyp is not None:
                out += hyp.hypstr.split()
        heard = (re.sub(r"\(\d+\)$", "", w) for w in out)
        return [_SPELLED.get(w, w) for w in heard if not w.startswith("<")]


def _utterances(pcm16: np.ndarray, min_gap_s: float = 0.25, max_len_s: float = 12.0) -> list[tuple[int, int]]:
    """Cut the audio at silences of at least ``min_gap_s`` (both pipelines' audio the same way)."""
    frame = ASR_RATE // 100  # 10 ms
    n = len(pcm16) // frame
    if n == 0:
        return [(0, len(pcm16))]
    energy = np.sqrt(np.mean(pcm16[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1))
    silent = energy < max(60.0, 0.02 * float(np.percentile(energy, 95)))
    gap = round(min_gap_s * 100)
    spans: list[tuple[int, int]] = []
    start, run = 0, 0
    for i, quiet in enumerate(silent):
        run = run + 1 if quiet else 0
        long_enough = i - start >= max_len_s * 100
        if (run == gap and i - start > gap) or (long_enough and quiet):
            spans.append((start * frame, (i + 1) * frame))
            start = i + 1
    if start < n:
        spans.append((start * frame, len(pcm16)))
    return spans


def skald_audio(text: str, streaming: bool = False) -> tuple[np.ndarray, int, list[dict[str, Any]]]:
    """Text → skald's chunks (prepared, normalized, planned) → Piper per chunk → joined; with
    ``streaming``, the streaming engine and its chunk rule (as the worker pairs them)."""
    from actors.text.chunker import SemanticChunker, SpeakingRate
    from actors.text.plan import ChunkerConfig
    from actors.tts.base import CancelToken, TtsEngine
    from actors.tts.piper import DEFAULT_VOICE, PiperEngine
    from actors.tts.piper_streaming import StreamingPiperEngine
    from config.settings import Settings

    engine: TtsEngine = StreamingPiperEngine() if streaming else PiperEngine()
    info = engine.load_voice(DEFAULT_VOICE)
    config = ChunkerConfig.from_settings(Settings().chunker, streaming=True) if streaming else None
    chunker = SemanticChunker(SpeakingRate(chars_per_s=info.chars_per_s), config)
    plans = chunker.feed(text) + chunker.finish()
    parts: list[np.ndarray] = []
    for plan in plans:
        parts += list(engine.synthesize(plan.text, DEFAULT_VOICE, CancelToken()))
        parts.append(np.zeros(round(PAUSE_S.get(plan.boundary, 0.1) * info.sample_rate), np.float32))
    engine.close()
    chunks = [{"text": p.text, "source": p.source, "boundary": p.boundary} for p in plans]
    return np.concatenate(parts), info.sample_rate, chunks


class RawPiper:
    """piper-tts alone: the text handed whole to ``PiperVoice.synthesize``, as a Piper user would.

    One voice for all runs: a freshly loaded voice's first synthesis always draws the same noise
    (onnxruntime's seed), later ones draw new noise, so the runs differ as Piper's output does.
    """

    def __init__(self) -> None:
        from piper import PiperVoice

        from actors.tts.piper import DEFAULT_VOICE, _bundled_voices

        self._voice = PiperVoice.load(_bundled_voices()[DEFAULT_VOICE])
        self.rate = int(self._voice.config.sample_rate)
        self.speak("Warm up.")  # the deterministic first draw, and onnxruntime's slow first run

    def speak(self, text: str) -> np.ndarray:
        chunks = [c.audio_float_array for c in self._voice.synthesize(" ".join(text.split()))]
        return np.concatenate(chunks).astype(np.float32)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench intelligibility", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    parser.add_argument("--raw-runs", type=int, default=2, help="raw Piper runs per text (default 2)")
    parser.add_argument(
        "--piper-streaming", action="store_true", help="also skald with the streaming Piper engine and its chunk rule"
    )
    args = parser.parse_args(argv)

    from bench import machine, write_json

    asr = Recognizer()
    raw_piper = RawPiper()
    result: dict[str, Any] = {
        "bench": "intelligibility",
        "machine": machine(),
        "engine": "piper (bundled voice joe-us), real weights",
        "recognizer": "pocketsphinx (bundled en-us acoustic model, en-us.lm.bin, cmudict-en-us)",
        "samples": {},
    }
    for name in SAMPLES:
        text = (DATA / f"{name}.txt").read_text(encoding="utf-8")
        ref = words((DATA / f"{name}.ref.txt").read_text(encoding="utf-8"))
        audio, rate, chunks = skald_audio(text)
        skald_hyp = asr.transcribe(audio, rate)
        raw_wers = []
        raw_hyps = []
        for _ in range(args.raw_runs):
            hyp = asr.transcribe(raw_piper.speak(text), raw_piper.rate)
            raw_hyps.append(" ".join(hyp))
            raw_wers.append(wer(ref, hyp))
        entry = {
            "reference_words": len(ref),
            "skald_wer": round(wer(ref, skald_hyp), 4),
            "raw_piper_wer": [round(w, 4) for w in raw_wers],
            "raw_piper_wer_mean": round(statistics.mean(raw_wers), 4),
            "skald_heard": " ".join(skald_hyp),
            "raw_piper_heard": raw_hyps,
            "chunks": chunks,
        }
        if args.piper_streaming:
            s_audio, s_rate, s_chunks = skald_audio(text, streaming=True)
            s_hyp = asr.transcribe(s_audio, s_rate)
            entry["skald_streaming_wer"] = round(wer(ref, s_hyp), 4)
            entry["skald_streaming_heard"] = " ".join(s_hyp)
            entry["streaming_chunks"] = s_chunks
            print(
                f"{name:>16}: skald streaming WER {entry['skald_streaming_wer']:.3f} ({len(s_chunks)} chunks)",
                flush=True,
            )
        result["samples"][name] = entry
        print(
            f"{name:>16}: skald WER {entry['skald_wer']:.3f}   raw Piper WER "
            + ", ".join(f"{w:.3f}" for w in raw_wers)
            + f" (mean {entry['raw_piper_wer_mean']:.3f})   {len(ref)} reference words, {len(chunks)} chunks",
            flush=True,
        )
    s = result["samples"]
    norm, plain = s["normalization"], s["narration-plain"]
    result["acceptance"] = {
        "normalization: skald <= 0.85 x raw": norm["skald_wer"] <= 0.85 * norm["raw_piper_wer_mean"],
        "narration: skald <= raw + 0.03": plain["skald_wer"] <= plain["raw_piper_wer_mean"] + 0.03,
    }
    if args.piper_streaming:  # issue 18: no worse than whole-chunk skald (the same sampling allowance)
        for name in SAMPLES:
            result["acceptance"][f"{name}: streaming <= whole-chunk skald + 0.03"] = (
                s[name]["skald_streaming_wer"] <= s[name]["skald_wer"] + 0.03
            )
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; {result['engine']}")
    for what, ok in result["acceptance"].items():
        print(f"  {what}: {'met' if ok else 'NOT met'}")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
