"""What every language-model backend shares: the interface, its error and the cancel token.

Interface (``TextGenerator``)::

    generator.prepare(messages, cancel, continue_final=...)   # optional head start
    for text in generator.stream(messages, max_tokens, cancel, continue_final=...):
        ...                                                    # text deltas, as they arrive

``messages`` are OpenAI-style chat messages (``{"role", "content"}``). ``cancel`` is the one
``CancelToken`` of skald (``actors.tts.base``, the engine interface): once it is set,
``stream`` yields nothing more and returns within about one decoding step (transformers) or
one socket wake-up (openai), without raising. Leaving the ``for`` loop early (``break``) stops
the generation the same way. Failures raise ``LlmError`` with a ``kind`` for the ``wire.Error``
event and a message that names the setting to change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from actors.tts.base import CancelToken

__all__ = ["LLM_BACKENDS", "CancelToken", "ChatMessage", "LlmError", "TextGenerator"]

ChatMessage = dict[str, str]

#: Language-model backends (``text`` is the pass-through and needs no generator).
LLM_BACKENDS = ("openai", "transformers")


class LlmError(Exception):
    """A generation could not start or broke off. ``kind`` is the ``wire.Error`` kind:
    ``model_unavailable`` (cannot load / reach the model) or ``generation_failed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class TextGenerator(Protocol):
    """What the text actors drive. One generation at a time per instance."""

    name: str
    #: True when ``continue_final=True`` is honoured (the last assistant message is continued).
    continues_assistant: bool

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, cancel: CancelToken, *, continue_final: bool = False
    ) -> Iterator[str]: ...

    def prepare(
        self, messages: Sequence[ChatMessage], cancel: CancelToken, *, continue_final: bool = False
    ) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
