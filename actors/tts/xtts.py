"""XTTS v2 (coqui-tts, torch): cloned voices, streamed in blocks of GPT tokens, float32 at 24 kHz.

The model is a local directory (``xtts.model_dir`` / ``SKALD_XTTS_MODEL_DIR``) holding
``config.json``, ``model.pth``, ``vocab.json`` and ``speakers_xtts.pth``; nothing is ever
downloaded. Voices are profiles made once by ``skald voice add`` (``actors.tts.voices``) or the
built-in speakers of ``speakers_xtts.pth``.

How a chunk is synthesized
    ``Xtts.inference_stream`` runs the GPT token by token (a Hugging Face generate loop) and
    every ``stream_chunk_tokens`` tokens decodes the latents so far with the HiFiGAN decoder,
    so the first block of a chunk arrives after ``stream_chunk_tokens`` tokens, not after the
    whole chunk.

Cancellation (within one token step)
    A hook object sits in the generate loop twice: as a logits processor (right after each
    GPT forward) and as a stopping criterion (right before the next one). Once the chunk's
    ``CancelToken`` is set, the next of those checks raises a private exception that unwinds
    the generate loop and ``inference_stream`` at once, without the final vocoder pass coqui
    would otherwise run. So a cancel costs at most the GPT step in flight, or the HiFiGAN
    decode in flight when it lands between token steps. The KV cache and latents die with the
    unwound frames; on CUDA ``torch.cuda.empty_cache()`` then returns the memory.

Length bound (random weights never stop)
    Real weights end a chunk with a stop token. Random weights (``xtts_random``) never do, and
    a broken voice may not either, so every chunk is bounded to
    ``ceil(MAX_TOKENS_PER_CHAR * len(text)) + MIN_NEW_TOKENS`` GPT tokens (capped at coqui's
    own limit). One token is 1024 samples at 22.05 kHz (46.4 ms of speech); real XTTS v2 speaks
    about 14 characters a second, about 1.5 tokens a character. 3.0 tokens a character lets a
    voice as slow as ~7 characters a second finish; slower speech would be cut.

Parallel streams
    ``synthesize`` may run in up to 3 threads at once on one engine. The model is shared and
    read-only, and so are the speaker conditioning tensors; on CUDA each call runs on its own
    ``torch.cuda.Stream``. coqui keeps the GPT prefix (speaker + text embedding) of the chunk
    being generated in an attribute of the shared model; the engine makes that attribute
    thread-local, so each thread sees its own prefix. Consequence: iterate a ``synthesize``
    generator on one thread only (the worker does).

Float32 everywhere: the model is cast to float32 at load, autocast is disabled around every
step, and half precision is refused.

torch and coqui-tts are imported only when an engine is built, never at module import, so
``engine_sample_rate`` and the voice store can use this module without loading torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actors.tts.base import (
    CALIBRATION_TEXT,
    CancelToken,
    EngineError,
    TtsEngine,
    VoiceInfo,
    measure_chars_per_s,
)
from actors.tts.xtts_model import (
    MODEL_FILES,
    RANDOM_MARK,
    RANDOM_NOTE,
    check_model_dir,
    is_random_weights,
    model_identity,
    read_model_config,
)

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "MODEL_FILES",
    "RANDOM_MARK",
    "RANDOM_NOTE",
    "SAMPLE_RATE",
    "XttsEngine",
    "check_model_dir",
    "cuda_usable",
    "is_random_weights",
    "model_identity",
    "read_model_config",
    "tokens_to_frames",
]

log = logging.getLogger("skald.xtts")

SAMPLE_RATE = 24000
CONDITIONING_SAMPLE_RATE = 22050  # XTTS computes speaker conditioning from 22.05 kHz audio
MAX_TOKENS_PER_CHAR = 3.0
MIN_NEW_TOKENS = 16
DEVICES = ("cuda", "cpu")


class _Cancelled(Exception):
    """Raised inside the generate loop to unwind it the moment a chunk is cancelled."""


def tokens_to_frames(tokens: int) -> int:
    """Output frames (24 kHz) of ``tokens`` GPT tokens, as coqui's HiFiGAN decoder produces them."""
    # HifiDecoder: x4 (1024/256) latent interpolation, x24000/22050 resampling, x256 upsampling.
    return 256 * int(4 * tokens * SAMPLE_RATE / CONDITIONING_SAMPLE_RATE)


# ----------------------------------------------------------------------------- torch helpers
def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise EngineError(f"XTTS needs torch and coqui-tts ({exc}); install with: pip install 'skald[xtts]'") from None
    return torch


def cuda_usable() -> bool:
    """True if torch sees a working CUDA device (imports torch)."""
    try:
        torch = _import_torch()
        return bool(torch.cuda.is_available())
    except EngineError:
        return False


def _resolve_device(torch: Any, device: str) -> Any:
    if device not in DEVICES:
        raise EngineError(f"xtts.device = {device!r}: must be one of {', '.join(DEVICES)}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
        raise EngineError(
            f"xtts.device = cuda but CUDA is unusable here ({build}); set xtts.device = cpu for slow "
            "offline rendering, or use tts.engine = piper"
        )
    try:
        torch.zeros(1, device="cuda").cpu()
    except RuntimeError as exc:
        raise EngineError(f"xtts.device = cuda but CUDA failed to start: {exc}; set xtts.device = cpu") from None
    return torch.device("cuda", torch.cuda.current_device())


def _fold_weight_norm(module: Any) -> None:
    """Fold HiFiGAN's weight-norm parametrizations into plain weights, once, at load.

    Inference then stops recomputing every normalised weight in every decode (what coqui's
    ``remove_weight_norm`` is for; it fails on XTTS, whose first and last convs have none).
    """
    from torch.nn.utils import parametrize

    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


def _make_prefix_thread_local(gpt_inference: Any) -> None:
    """Give each thread its own ``cached_prefix_emb`` on coqui's shared GPT2InferenceModel.

    ``GPT.compute_embeddings`` stores the chunk's prefix (speaker latents + text) on the shared
    model and every generate step reads it back; two chunks generating at once would read each
    other's. A property backed by ``threading.local`` on a one-off subclass fixes that without
    copying any weight (``nn.Module.__setattr__`` hands plain values to the property setter).
    """
    base = type(gpt_inference)
    if getattr(base, "_skald_thread_local_prefix", False):
        return
    local = threading.local()

    def get_prefix(self: Any) -> Any:
        return getattr(local, "prefix", None)

    def set_prefix(self: Any, value: Any) -> None:
        local.prefix = value

    patched = type(
        base.__name__,
        (base,),
        {"cached_prefix_emb": property(get_prefix, set_prefix), "_skald_thread_local_prefix": True},
    )
    gpt_inference.__dict__.pop("cached_prefix_emb", None)
    gpt_inference.__class__ = patched


_HOOK_CLASSES: tuple[type, type] | None = None


def _hook_classes() -> tuple[type, type]:
    """(logits processor, stopping criterion) classes, defined once transformers is imported."""
    global _HOOK_CLASSES
    if _HOOK_CLASSES is None:
        import torch
        from transformers import LogitsProcessor, StoppingCriteria

        class StepCheck(LogitsProcessor):
            """Runs right after every GPT forward: counts the token, raises once cancelled."""

            def __init__(self, state: _StepState) -> None:
                self.state = state

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                self.state.after_forward()
                if self.state.greedy:
                    # coqui's sample_stream always draws with torch.multinomial; a one-hot
                    # distribution makes that draw the argmax, so the output is repeatable.
                    best = scores.argmax(dim=-1, keepdim=True)
                    scores = torch.full_like(scores, -math.inf).scatter(-1, best, 0.0)
                return scores

        class StopCheck(StoppingCriteria):
            """Runs right before the next GPT forward: raises once cancelled, ends at the bound."""

            def __init__(self, state: _StepState) -> None:
                self.state = state

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = self.state.before_forward()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        _HOOK_CLASSES = (StepCheck, StopCheck)
    return _HOOK_CLASSES


class _StepState:
    """Per-call generation state shared by the two hooks."""

    def __init__(
        self, cancel: CancelToken, budget: int, on_token: Callable[[int], None] | None, greedy: bool = False
    ) -> None:
        self.cancel = cancel
        self.budget = budget
        self.on_token = on_token
        self.greedy = greedy
        self.tokens = 0

    def after_forward(self) -> None:
        if self.cancel.cancelled:
            raise _Cancelled
        self.tokens += 1
        if self.on_token is not None:
            self.on_token(self.tokens)

    def before_forward(self) -> bool:
        if self.cancel.cancelled:
            raise _Cancelled
        return self.tokens >= self.budget


# ----------------------------------------------------------------------------- the engine
class XttsEngine(TtsEngine):
    """XTTS v2 behind the ``TtsEngine`` interface; one model shared by up to 3 synthesizing threads."""

    name = "xtts"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        device: str = "cuda",
        stream_chunk_tokens: int = 20,
        language: str = "en",
        voices_dir: str | os.PathLike[str] | None = None,
        max_tokens_per_char: float = MAX_TOKENS_PER_CHAR,
        min_new_tokens: int = MIN_NEW_TOKENS,
        greedy: bool = False,
        warmup: bool = True,
    ) -> None:
        """Load the model now (so a broken setup fails at once and the worker can fall back).

        ``greedy=True`` always takes the most likely token: repeatable output (tests); ``warmup`` runs one
        short bounded synthesis so the first real chunk does not pay for kernel start-up.
        """
        self.model_dir = check_model_dir(model_dir)
        self.stream_chunk_tokens = int(stream_chunk_tokens)
        self.language = language
        self.max_tokens_per_char = float(max_tokens_per_char)
        self.min_new_tokens = int(min_new_tokens)
        self.greedy = greedy
        self.random_weights = is_random_weights(self.model_dir)
        self.voices_dir = Path(voices_dir) if voices_dir is not None else None
        self._identity: dict[str, Any] | None = None
        self._conditioning: dict[str, tuple[Any, Any]] = {}
        self._info: dict[str, VoiceInfo] = {}
        self._lock = threading.Lock()  # guards voice loading; synthesis itself takes no lock
        torch = _import_torch()
        self._torch = torch
        self.device = _resolve_device(torch, device)
        self._cuda = self.device.type == "cuda"
        self._model, self._speakers = self._load_model()
        self._max_gen_tokens = int(self._model.gpt.max_gen_mel_tokens)
        if self.random_weights:
            log.warning("XTTS model %s has random weights: timing only", self.model_dir)
        if warmup:
            self._warm_up()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> XttsEngine:
        from actors.tts.voices import default_voices_dir

        x = settings.xtts
        options: dict[str, Any] = {
            "device": x.device,
            "stream_chunk_tokens": x.stream_chunk_tokens,
            "language": x.language,
            "voices_dir": default_voices_dir(settings),
        }
        options.update(kwargs)
        return cls(x.model_dir, **options)

    # ------------------------------------------------------------------ loading
    def _load_model(self) -> tuple[Any, dict[str, tuple[Any, Any]]]:
        torch = self._torch
        try:
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts
        except ImportError as exc:
            raise EngineError(f"XTTS needs coqui-tts ({exc}); install it with: pip install 'skald[xtts]'") from None
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        # coqui builds a GPT2Config whose default bos/eos ids (50256) lie outside XTTS's small
        # audio vocabulary; transformers warns about it on every load. Harmless: XTTS passes
        # its own start/stop tokens to generate.
        hf_logging.set_verbosity_error()
        try:
            config = XttsConfig()
            config.load_json(str(self.model_dir / "config.json"))
            # Build the GPT once, in load_checkpoint (sized from vocab.json), not twice.
            config.model_args.gpt_number_text_tokens = None
            model = Xtts(config)
            model.load_checkpoint(config, checkpoint_dir=str(self.model_dir), eval=True, strict=True)
            _fold_weight_norm(model.hifigan_decoder.waveform_decoder)
            model = model.float().to(self.device)
            model.requires_grad_(False)
        except EngineError:
            raise
        except Exception as exc:  # torch/coqui raise many types for a bad checkpoint; report them alike
            raise EngineError(f"XTTS model in {self.model_dir} failed to load: {type(exc).__name__}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        tensors = [*model.named_parameters(), *model.named_buffers()]
        not_float32 = [n for n, t in tensors if t.is_floating_point() and t.dtype != torch.float32]
        if not_float32:
            raise EngineError(f"XTTS model is not float32 after load ({', '.join(not_float32[:3])}...)")
        _make_prefix_thread_local(model.gpt.gpt_inference)
        speakers: dict[str, tuple[Any, Any]] = {}
        manager = getattr(model, "speaker_manager", None)
        for name, entry in manager.speakers.items() if manager is not None else []:
            speakers[str(name)] = (entry["gpt_cond_latent"], entry["speaker_embedding"])
        return model, speakers

    def _warm_up(self) -> None:
        if not self._speakers:
            return
        name = next(iter(self._speakers))
        self._conditioning["\0warmup"] = self._to_device(*self._speakers[name])
        try:
            budget = max(1, self.stream_chunk_tokens)
            for _ in self._generate("Hello.", "\0warmup", CancelToken(), budget, None):
                pass
        finally:
            del self._conditioning["\0warmup"]

    def _to_device(self, latent: Any, embedding: Any) -> tuple[Any, Any]:
        torch = self._torch
        pair = (
            torch.as_tensor(latent, dtype=torch.float32).to(self.device).contiguous(),
            torch.as_tensor(embedding, dtype=torch.float32).to(self.device).contiguous(),
        )
        if self._cuda:
            torch.cuda.current_stream(self.device).synchronize()  # ready before any per-call stream reads them
        return pair

    @property
    def identity(self) -> dict[str, Any]:
        """``model_identity`` of the loaded model (computed on first use, then kept)."""
        if self._identity is None:
            cache = self.voices_dir / ".model-checksums.json" if self.voices_dir is not None else None
            self._identity = model_identity(self.model_dir, cache)
        return self._identity

    @property
    def builtin_speakers(self) -> list[str]:
        return list(self._speakers)

    @property
    def max_ref_seconds(self) -> float:
        return float(self._model.config.max_ref_len)

    def _store(self) -> Any:
        from actors.tts.voices import VoiceProfileStore, default_voices_dir

        return VoiceProfileStore(self.voices_dir if self.voices_dir is not None else default_voices_dir())

    def list_voices(self) -> list[str]:
        """Voice profiles made for XTTS (``skald voice add``), then the model's built-in speakers."""
        profiles = [p.name for p in self._store().list() if p.engine == self.name]
        return profiles + [s for s in self._speakers if s not in profiles]

    def load_voice(self, voice: str) -> VoiceInfo:
        """A profile of the store by name, else a built-in speaker; "" = the first built-in speaker."""
        from actors.tts.voices import VoiceProfileError

        with self._lock:
            if not voice:
                if not self._speakers:
                    raise EngineError("no XTTS voice given and the model has no built-in speaker")
                voice = next(iter(self._speakers))
            if voice in self._info:
                return self._info[voice]
            store = self._store()
            if store.exists(voice):
                try:
                    cond = store.load(voice, model_sha256=self.identity["model_sha256"])
                except VoiceProfileError as exc:
                    raise EngineError(str(exc)) from None
                if cond.profile.engine != self.name:
                    raise EngineError(f"voice {voice!r} is a {cond.profile.engine} profile, not an XTTS one")
                pair = self._to_device(cond.gpt_cond_latent, cond.speaker_embedding)
            elif voice in self._speakers:
                pair = self._to_device(*self._speakers[voice])
            else:
                known = ", ".join(self.list_voices()) or "(none)"
                raise EngineError(
                    f"unknown XTTS voice {voice!r}; known: {known}. Make one from reference audio with: "
                    f"skald voice add {voice} ref1.wav [ref2.wav ...]"
                )
            self._conditioning[voice] = pair
        info = VoiceInfo(voice, self.name, SAMPLE_RATE, self._chars_per_s(voice))
        with self._lock:
            self._info[voice] = info
        return info

    def _chars_per_s(self, voice: str) -> float:
        if self.random_weights:
            # Random weights never stop (xtts_random pins the stop token), so a "measurement" would
            # only read back the length bound; compute that instead of generating it for seconds.
            frames = tokens_to_frames(self.max_new_tokens(CALIBRATION_TEXT))
            return len(CALIBRATION_TEXT) / (frames / SAMPLE_RATE)
        return measure_chars_per_s(self, voice, SAMPLE_RATE)

    # ------------------------------------------------------------------ voice profiles
    def compute_conditioning(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(gpt_cond_latent, speaker_embedding) of mono float32 reference audio at 22.05 kHz.

        The computation of ``Xtts.get_conditioning_latents``: one speaker embedding per reference,
        averaged; GPT latents from the references joined end to end (first ``gpt_cond_len``
        seconds, in ``gpt_cond_chunk_len`` chunks). That method takes file paths and decodes them
        with torchaudio, which needs FFmpeg (torchcodec); the store decodes with soundfile instead.
        """
        torch = self._torch
        model = self._model
        config = model.config
        if not audios:
            raise EngineError("no reference audio")
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            waves = []
            embeddings = []
            for audio in audios:
                wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))[None].to(self.device)
                if config.sound_norm_refs:
                    wave = (wave / torch.abs(wave).max()) * 0.75
                embeddings.append(model.get_speaker_embedding(wave, CONDITIONING_SAMPLE_RATE))
                waves.append(wave)
            try:
                latent = model.get_gpt_cond_latents(
                    torch.cat(waves, dim=-1),
                    CONDITIONING_SAMPLE_RATE,
                    length=config.gpt_cond_len,
                    chunk_length=config.gpt_cond_chunk_len,
                )
            except RuntimeError as exc:  # "reference audio too short"
                raise EngineError(f"XTTS could not condition on the reference audio: {exc}") from None
            embedding = torch.stack(embeddings).mean(dim=0)
        return (
            latent.detach().to("cpu", torch.float32).numpy().copy(),
            embedding.detach().to("cpu", torch.float32).numpy().copy(),
        )

    # ------------------------------------------------------------------ synthesis
    def max_new_tokens(self, text: str) -> int:
        """The length bound of one chunk (see the module docstring)."""
        bound = math.ceil(self.max_tokens_per_char * len(text.strip())) + self.min_new_tokens
        return max(1, min(self._max_gen_tokens, bound))

    def synthesize(self, text: str, voice: str, cancel: CancelToken, speed: float = 1.0) -> Iterator[np.ndarray]:
        return self.synthesize_stream(text, voice, cancel, speed=speed)

    def synthesize_stream(
        self,
        text: str,
        voice: str,
        cancel: CancelToken,
        on_token: Callable[[int], None] | None = None,
        max_new_tokens: int | None = None,
        speed: float = 1.0,
    ) -> Iterator[np.ndarray]:
        """``synthesize`` plus instrumentation: ``on_token(n)`` after the n-th GPT token (called on
        the generating thread), and an explicit token bound for benchmarks."""
        if not voice and self._speakers:
            voice = next(iter(self._speakers))
        if voice not in self._conditioning:
            raise EngineError(f"voice {voice!r} is not loaded")
        text = text.strip()
        budget = max_new_tokens if max_new_tokens is not None else self.max_new_tokens(text)
        if not text:
            return iter(())
        return self._generate(text, voice, cancel, min(budget, self._max_gen_tokens), on_token, speed)

    def _step_context(self, stream: Any) -> contextlib.ExitStack:
        torch = self._torch
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(self.device.type, enabled=False))  # float32, whatever the caller set
        if stream is not None:
            stack.enter_context(torch.cuda.stream(stream))
        return stack

    def _generate(
        self,
        text: str,
        voice: str,
        cancel: CancelToken,
        budget: int,
        on_token: Callable[[int], None] | None,
        speed: float = 1.0,
    ) -> Iterator[np.ndarray]:
        torch = self._torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        latent, embedding = self._conditioning[voice]
        step_check, stop_check = _hook_classes()
        state = _StepState(cancel, budget, on_token, self.greedy)
        stream = None
        if self._cuda:
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
        config = self._model.config
        blocks = self._model.inference_stream(
            text,
            self.language,
            latent,
            embedding,
            stream_chunk_size=self.stream_chunk_tokens,
            temperature=config.temperature,
            length_penalty=config.length_penalty,
            repetition_penalty=config.repetition_penalty,
            top_k=config.top_k,
            top_p=config.top_p,
            do_sample=True,
            speed=speed,
            logits_processor=LogitsProcessorList([step_check(state)]),
            stopping_criteria=StoppingCriteriaList([stop_check(state)]),
        )
        cancelled = False
        try:
            while not cancel.cancelled:
                try:
                    with self._step_context(stream):
                        wav = next(blocks)
                        block = wav.detach().to("cpu", torch.float32).numpy().copy()  # syncs this call's stream
                        del wav
                except StopIteration:
                    return
                except _Cancelled:
                    break
                except AssertionError as exc:  # coqui asserts on over-long text
                    raise EngineError(f"XTTS rejected the chunk: {exc}") from None
                if cancel.cancelled:
                    break
                if block.size:
                    yield block
        finally:
            cancelled = cancel.cancelled
            blocks.close()  # unwinds coqui's generators: the KV cache and latents go with them
            del blocks
            self._model.gpt.gpt_inference.cached_prefix_emb = None  # this thread's prefix
            if stream is not None:
                stream.synchronize()
                if cancelled:
                    torch.cuda.empty_cache()

    def close(self) -> None:
        with self._lock:
            self._conditioning.clear()
            self._info.clear()
        model = getattr(self, "_model", None)
        self._model = None
        del model
        if getattr(self, "_cuda", False):
            self._torch.cuda.empty_cache()
