"""The ``transformers`` backend: a local model directory, loaded with ``local_files_only=True``
(nothing is ever downloaded), on ``device`` (``auto``: CUDA when available, else CPU).

``generate`` runs on a thread of its own feeding a ``TextIteratorStreamer``; a
``StoppingCriteria`` reads the cancel token after every decoding step, and a cancel also wakes
the streamer's reader at once. ``prepare`` runs the prompt prefix through the model and keeps
its KV cache; a ``stream`` whose prompt starts with the same tokens reuses it and only prefills
the rest (for the narrative: the prelude's words). ``continue_final`` is supported: the last
(assistant) message is continued, not answered. torch and transformers are imported when a
generator is built, never at module import.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from actors.text.llm_base import CancelToken, ChatMessage, LlmError

#: Stands in for the final assistant message while rendering a chat template, so the prompt
#: can be cut right where that message starts (a private-use character no tokenizer emits).
_SENTINEL = "\ue000"


class TransformersGenerator:
    """A local model directory on CPU or GPU; see the module docstring."""

    name = "transformers"
    continues_assistant = True

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "auto",
        temperature: float = 0.8,
        threads: int = 0,
        setting: str = "actors.narrative",
    ) -> None:
        if not model_dir:
            raise LlmError(
                "model_unavailable", f"{setting}.model is empty: set it to a local model directory (never downloaded)"
            )
        if not os.path.isdir(model_dir) or not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise LlmError(
                "model_unavailable",
                f"{setting}.model = {model_dir!r}: not a model directory (no config.json there); "
                "models are never downloaded, point it at a local copy",
            )
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise LlmError(
                "model_unavailable",
                f"the transformers backend needs torch and transformers ({exc}); pip install skald[llm]",
            ) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise LlmError("model_unavailable", f"{setting}.device = {device!r}: {exc}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LlmError("model_unavailable", f"{setting}.device = {device!r}, but CUDA is not available here")
        if threads > 0:
            # Per process (each text actor is one): on a small CPU machine the language model
            # otherwise takes every core from the TTS worker synthesizing the opener.
            torch.set_num_threads(threads)
        self.model_dir = model_dir
        self.temperature = temperature
        # Typed Any: transformers' own annotations are too loose or too strict for mypy here.
        self.tokenizer: Any
        self.model: Any
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype="auto")
        except (OSError, ValueError) as exc:
            raise LlmError("model_unavailable", f"{setting}.model = {model_dir!r}: cannot load: {exc}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise LlmError(
                "model_unavailable",
                f"{setting}.model = {model_dir!r}: the tokenizer has no chat template; skald prompts chat "
                "(instruction-tuned) models",
            )
        self.model.to(self.device).eval()
        self._torch = torch
        self._prefilled: tuple[list[int], Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_dir,
            "device": str(self.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "threads": self._torch.get_num_threads(),
        }

    def render(self, messages: Sequence[ChatMessage], continue_final: bool) -> str:
        """The prompt text: the chat template with a generation prompt, or (``continue_final``)
        cut right after the last message's content so the model carries on writing it."""
        if not continue_final:
            text: str = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            return text
        final = messages[-1]
        shown = [*messages[:-1], {**final, "content": _SENTINEL}]
        rendered: str = self.tokenizer.apply_chat_template(shown, tokenize=False)
        cut = rendered.find(_SENTINEL)
        if cut < 0:
            raise LlmError("generation_failed", f"{self.model_dir}: the chat template dropped the assistant message")
        return rendered[:cut] + final["content"]

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def prepare(self, messages: Sequence[ChatMessage], cancel: CancelToken, *, continue_final: bool = False) -> None:
        """Prefill the KV cache of this prompt; a later ``stream`` starting with it reuses it."""
        ids = self._ids(self.render(messages, continue_final))
        if not ids or cancel.cancelled:
            return
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        self._prefilled = (ids, out.past_key_values)

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken, *, continue_final: bool = False
    ) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        ids = self._ids(self.render(messages, continue_final))
        cache = None
        prefilled, self._prefilled = self._prefilled, None
        if prefilled is not None:
            head, kv = prefilled
            # Reusable only if the new prompt extends the prefilled one by at least one token.
            if len(ids) > len(head) and ids[: len(head)] == head:
                cache = kv
        stop = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                flag = stop.is_set() or cancel.cancelled
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        def wake() -> None:
            stop.set()
            streamer.text_queue.put(streamer.stop_signal)  # the reader leaves now, not after a step

        failure: list[BaseException] = []
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Stop()]),
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if cache is not None:
            kwargs["past_key_values"] = cache

        def generate() -> None:
            try:
                self.model.generate(**kwargs)
            except BaseException as exc:  # reported on the reader's side
                failure.append(exc)
                streamer.end()

        if cancel.cancelled:
            return
        thread = threading.Thread(target=generate, name="llm-generate", daemon=True)
        thread.start()
        cancel.on_cancel(wake)
        try:
            for text in streamer:
                if cancel.cancelled or stop.is_set():
                    return
                if text:
                    yield text
        finally:
            stop.set()
            thread.join()
        if failure and not cancel.cancelled:
            exc = failure[0]
            raise LlmError("generation_failed", f"{self.model_dir}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._prefilled = None
