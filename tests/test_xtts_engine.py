"""XttsEngine on the tiny random-weight XTTS v2: the real coqui-tts code path, on CPU.

Random weights: timing only -- these tests check streaming, the length bound, cancellation,
thread safety and errors, never what the audio sounds like.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may be downloaded

import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("TTS.tts.models.xtts", reason="the xtts extra (coqui-tts) is not installed")

from actors.tts import EngineError, create_engine, engine_sample_rate
from actors.tts.base import CancelToken
from actors.tts.xtts import (
    MAX_TOKENS_PER_CHAR,
    MIN_NEW_TOKENS,
    SAMPLE_RATE,
    XttsEngine,
    tokens_to_frames,
)
from config.settings import load_settings
from tests.conftest import ROOT

STREAM_TOKENS = 6  # small blocks keep the (quadratic) re-decoding of coqui's stream cheap on CPU


def _refuse_network(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise AssertionError(f"network connection attempted to {address}: XTTS must never download")
    return _real_connect(self, address)


_real_connect = socket.socket.connect


@pytest.fixture(scope="module")
def engine(xtts_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[XttsEngine]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)  # loading must not reach any hub
        eng = XttsEngine(
            xtts_tiny_dir,
            device="cpu",
            stream_chunk_tokens=STREAM_TOKENS,
            voices_dir=tmp_path_factory.mktemp("voices"),
        )
        eng.load_voice("random-low")
        eng.load_voice("random-high")
    yield eng
    eng.close()


def _frames(blocks: list[np.ndarray]) -> int:
    return sum(len(b) for b in blocks)


def test_missing_model_dir_or_file_is_named(xtts_tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="SKALD_XTTS_MODEL_DIR"):
        XttsEngine("", device="cpu")
    with pytest.raises(EngineError, match=str(tmp_path / "nowhere")):
        XttsEngine(tmp_path / "nowhere", device="cpu")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "vocab.json", "speakers_xtts.pth"):
        (partial / name).symlink_to(xtts_tiny_dir / name)
    with pytest.raises(EngineError, match=r"partial/model\.pth is missing.*never downloads"):
        XttsEngine(partial, device="cpu")
    settings = load_settings(env={}).replace({"tts.engine": "xtts", "xtts.model_dir": str(partial)})
    with pytest.raises(EngineError, match=r"model\.pth"):
        create_engine("xtts", settings)


def test_unusable_cuda_is_an_engine_error(xtts_tiny_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA works here")
    with pytest.raises(EngineError, match=r"CUDA is unusable.*xtts\.device = cpu"):
        XttsEngine(xtts_tiny_dir, device="cuda")


def test_sample_rate_without_torch() -> None:
    code = (
        "import sys; from actors.tts import engine_sample_rate; "
        "assert engine_sample_rate('xtts', 'anyone') == 24000; "
        "import actors.tts.voices; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    assert engine_sample_rate("xtts", "") == SAMPLE_RATE


def test_chunk_streams_several_blocks_before_it_is_done(engine: XttsEngine) -> None:
    info = engine.load_voice("random-low")
    assert (info.engine, info.sample_rate) == ("xtts", 24000)
    assert engine.random_weights
    assert engine.max_new_tokens("abc") == math.ceil(MAX_TOKENS_PER_CHAR * 3) + MIN_NEW_TOKENS
    budget = 3 * STREAM_TOKENS
    tokens: list[int] = []
    tokens_at_block: list[int] = []
    blocks = []
    for block in engine.synthesize_stream("The lantern swung.", "random-low", CancelToken(), tokens.append, budget):
        tokens_at_block.append(tokens[-1])
        blocks.append(block)
    assert len(blocks) >= 3, "one block per stream_chunk_tokens tokens"
    assert tokens_at_block[0] == STREAM_TOKENS < budget, "first audio came before the chunk was generated"
    assert tokens[-1] == budget, "random weights never stop: generation ran to the bound"
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert _frames(blocks) == tokens_to_frames(budget)
    audio = np.concatenate(blocks)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert engine._model.gpt.gpt_inference.cached_prefix_emb is None  # this thread's prefix was released


def test_cancel_mid_chunk_stops_within_one_token_step(engine: XttsEngine) -> None:
    cancel = CancelToken()
    counted: list[int] = []
    at_cancel: dict[str, float] = {}
    target = STREAM_TOKENS + STREAM_TOKENS // 2  # mid-way through the second block's tokens

    def canceller() -> None:
        while not counted or counted[-1] < target:
            time.sleep(0.0005)
        cancel.cancel()
        at_cancel["tokens"] = counted[-1]
        at_cancel["t"] = time.perf_counter()

    thread = threading.Thread(target=canceller)
    thread.start()
    blocks = []
    text = "The lantern swung in the wind, and the old road bent toward the river."
    for block in engine.synthesize_stream(text, "random-high", cancel, counted.append):
        blocks.append((time.perf_counter(), block))
    ended = time.perf_counter()
    thread.join(5)
    assert counted[-1] < engine.max_new_tokens(text)
    assert counted[-1] - at_cancel["tokens"] <= 1, "at most the token step in flight finishes after a cancel"
    # Generous on a loaded 2-core box: one tiny-model step is a few ms (a HiFiGAN decode in
    # flight, ~0.1-0.3 s here, is the worst case).
    assert ended - at_cancel["t"] < 1.0
    assert all(t <= at_cancel["t"] for t, _ in blocks), "no block after the cancel"
    assert engine._model.gpt.gpt_inference.cached_prefix_emb is None


def test_two_concurrent_calls_match_sequential_ones(engine: XttsEngine) -> None:
    """Greedy decoding is repeatable, so threads that read each other's state would show up as
    different audio (without the thread-local prefix the positions go wrong and coqui fails)."""
    texts = {"random-low": "Hello there, friend.", "random-high": "A longer sentence, with rather more words in it."}
    budget = 2 * STREAM_TOKENS

    def run(voice: str, out: dict[str, np.ndarray]) -> None:
        out[voice] = np.concatenate(list(engine.synthesize_stream(texts[voice], voice, CancelToken(), None, budget)))

    engine.greedy = True
    try:
        alone: dict[str, np.ndarray] = {}
        for voice in texts:
            run(voice, alone)
        together: dict[str, np.ndarray] = {}
        threads = [threading.Thread(target=run, args=(voice, together)) for voice in texts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        engine.greedy = False
    assert set(together) == set(texts), "both concurrent calls produced audio"
    for voice in texts:
        assert len(together[voice]) == tokens_to_frames(budget)
        np.testing.assert_array_equal(together[voice], alone[voice])
    assert not np.array_equal(alone["random-low"], alone["random-high"])
