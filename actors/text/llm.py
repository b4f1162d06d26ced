"""The text actors' language models: backends behind one interface, the prompts, and the shaping
of model output into speakable text. Callers import everything from here.

* The interface (``TextGenerator``, ``LlmError``, ``CancelToken``): ``actors.text.llm_base``.
* ``openai``: streaming chat completions from any OpenAI-compatible server (vLLM, llama.cpp
  server, Ollama, ``transformers serve``) on the official SDK: ``actors.text.llm_openai``
  (why the SDK, and what is added to it for cancel and retries, is in its docstring).
* ``transformers``: a local model directory on CPU or GPU, with a prefilled KV cache as the
  narrative's head start: ``actors.text.llm_transformers``.
* ``create_generator`` builds the one that ``actors.<role>.backend`` names.
* Prompts: ``prelude_messages``, ``narrative_messages`` (docs/turns.md, "Prompt design").
* Output shaping: ``clean``, ``OpenerLimiter`` (the prelude's word release and limit),
  ``RepeatGuard`` (a repeat of the prelude at the start of the narrative is dropped).

The ``text`` backend (forward the orchestrator's own text) needs no generator; it lives in
``actors.text_source``. Nothing here imports torch, transformers or openai at module import.
"""

from __future__ import annotations

import re
from typing import Any

from actors.text.llm_base import LLM_BACKENDS, CancelToken, ChatMessage, LlmError, TextGenerator
from actors.text.llm_openai import OpenAIChatGenerator
from actors.text.llm_transformers import TransformersGenerator
from actors.text.punctuation import CLAUSE_END, CLOSERS, SENTENCE_END

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "LLM_BACKENDS",
    "CancelToken",
    "ChatMessage",
    "LlmError",
    "OpenAIChatGenerator",
    "OpenerLimiter",
    "RepeatGuard",
    "TextGenerator",
    "TransformersGenerator",
    "clean",
    "create_generator",
    "narrative_messages",
    "prelude_messages",
]


# ============================================================================ factory


def create_generator(role: str, settings: Any) -> TextGenerator:
    """Build the generator for ``actors.<role>`` (``settings``: a ``TextActorSettings``)."""
    setting = f"actors.{role}"
    if settings.backend == "openai":
        return OpenAIChatGenerator(
            settings.endpoint,
            settings.model,
            api_key_env=settings.api_key_env,
            temperature=settings.temperature,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            setting=setting,
        )
    if settings.backend == "transformers":
        return TransformersGenerator(
            settings.model,
            device=settings.device,
            temperature=settings.temperature,
            threads=settings.threads,
            setting=setting,
        )
    raise LlmError("model_unavailable", f"{setting}.backend = {settings.backend!r} is not a language-model backend")


# ============================================================================ prompts

DEFAULT_SYSTEM_PROMPT = (
    "You are the narrator of an interactive story told aloud to the players. Write vivid, concrete "
    "prose in the second person and present tense, as speech: no headings, lists, markdown, stage "
    "directions or quotation marks around the narration."
)


def _situation(context: str, player_action: str) -> str:
    story = context.strip() or "(the story begins now)"
    return f"Story so far:\n{story}\n\nThe player: {player_action.strip()}"


def prelude_messages(context: str, player_action: str, max_words: int, system_prompt: str = "") -> list[ChatMessage]:
    """The prelude model's prompt: one short spoken opener that reacts to the player at once."""
    return [
        {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f"{_situation(context, player_action)}\n\n"
            f"Begin the narrator's reply with one short opening sentence of at most {max_words} words "
            "that reacts to what the player did. Only that sentence.",
        },
    ]


def narrative_messages(
    context: str, player_action: str, prelude: str, system_prompt: str = "", *, continue_final: bool
) -> list[ChatMessage]:
    """The narrative model's prompt: continue the reply the prelude has already begun aloud.

    With ``continue_final`` (a backend that can continue an assistant message) the prelude is
    the start of the assistant's own reply and the model simply carries on writing it -- the
    surest way not to repeat it. Otherwise the prelude is quoted at the very end of the user
    message (so every turn's prompt shares the longest possible prefix, which servers with
    prefix caching reuse) with the instruction to continue from exactly where it stops.
    """
    system = {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT}
    situation = _situation(context, player_action)
    if continue_final:
        return [
            system,
            {"role": "user", "content": f"{situation}\n\nNarrate what happens next."},
            {"role": "assistant", "content": prelude.strip()},
        ]
    if not prelude.strip():
        return [system, {"role": "user", "content": f"{situation}\n\nNarrate what happens next."}]
    return [
        system,
        {
            "role": "user",
            "content": f"{situation}\n\nNarrate what happens next. The narration has already begun aloud "
            "with the words below. Continue from exactly where they stop -- mid-sentence if they stop "
            "mid-sentence -- without repeating them or starting over. Begun with:\n" + prelude.strip(),
        },
    ]


# ============================================================================ output shaping

# One definition of the punctuation (actors.text.punctuation): a word ends a sentence or a
# clause when its last mark, closing quotes and brackets after it allowed, is one of these.
_CLOSERS = f"[{re.escape(CLOSERS)}]*$"
_SENTENCE_END = re.compile(f"[{re.escape(SENTENCE_END)}]{_CLOSERS}")
_CLAUSE_END = re.compile(f"[{re.escape(CLAUSE_END)}]{_CLOSERS}")
# C0/C1 controls except tab and newline: never speech (same set wire.validate_text rejects).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """Model output made safe to speak: control characters removed, carriage returns to newlines."""
    return _CONTROL.sub("", text.replace("\r", "\n"))


class OpenerLimiter:
    """Cuts the prelude's token stream into an opener of at most ``max_words`` words.

    Words are released as soon as they are complete (whitespace after them), so speech starts
    on the first words. The opener ends at the first sentence end, or at ``max_words``. To end
    at punctuation when it can, the last ``lookback`` words before the limit are held back
    unless they end a clause; if the limit is reached while words are held and the released
    text ends at punctuation, the held words are dropped (the opener ends at that comma or
    full stop), otherwise they are released (it ends at a word boundary; the narrative then
    completes the sentence). ``text`` is exactly what was released.
    """

    def __init__(self, max_words: int) -> None:
        self.max_words = max(1, max_words)
        self.lookback = min(4, self.max_words // 3)
        self._partial = ""
        self._held: list[str] = []
        self._released: list[str] = []
        self._count = 0
        self.done = False

    @property
    def text(self) -> str:
        return " ".join(self._released)

    def feed(self, delta: str) -> str:
        """Take a text delta; return the text to speak now ("" when nothing is complete)."""
        if self.done:
            return ""
        buf = self._partial + delta
        words = buf.split()
        if buf and not buf[-1].isspace() and words:
            self._partial = words.pop()
        else:
            self._partial = ""
        out: list[str] = []
        for word in words:
            out += self._accept(word)
            if self.done:
                break
        return self._join(out)

    def finish(self) -> str:
        """The stream ended: the last word counts as complete; release what is held."""
        out: list[str] = []
        if not self.done and self._partial:
            out += self._accept(self._partial)
        self._partial = ""
        if not self.done:
            out += self._release_held()
            self.done = True
        return self._join(out)

    def _join(self, words: list[str]) -> str:
        if not words:
            return ""
        # ``_released`` already holds ``words`` at its end: a leading space unless they open it.
        first = len(self._released) == len(words)
        return ("" if first else " ") + " ".join(words)

    def _release_held(self) -> list[str]:
        held, self._held = self._held, []
        self._released += held
        return held

    def _accept(self, word: str) -> list[str]:
        self._count += 1
        sentence_end = bool(_SENTENCE_END.search(word))
        punctuated = sentence_end or bool(_CLAUSE_END.search(word))
        out: list[str] = []
        if self._count <= self.max_words - self.lookback or punctuated:
            self._held.append(word)
            out = self._release_held()
        else:
            self._held.append(word)
        if sentence_end:
            self.done = True
        elif self._count >= self.max_words:
            self.done = True
            ends_at_punctuation = bool(self._released) and bool(
                _SENTENCE_END.search(self._released[-1]) or _CLAUSE_END.search(self._released[-1])
            )
            if self._held and ends_at_punctuation:
                self._held = []
            else:
                out += self._release_held()
        return out


def _word_key(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


class RepeatGuard:
    """Drops a repeat of the prelude at the start of the narrative (the safety net behind the
    prompt). Text is held only while it still matches the prelude word for word, so a
    narrative that does not repeat it is released on its first word that differs."""

    def __init__(self, prelude: str) -> None:
        self._target = [_word_key(w) for w in prelude.split()]
        self._buf = ""
        self.active = bool(self._target)
        self.dropped = ""

    def feed(self, delta: str) -> str:
        if not self.active:
            return delta
        self._buf += delta
        matches = list(re.finditer(r"\S+", self._buf))
        ends_complete = bool(self._buf) and self._buf[-1].isspace()
        for i, match in enumerate(matches):
            complete = ends_complete or i < len(matches) - 1
            key = _word_key(match.group())
            if i >= len(self._target):
                return self._release(match.start())
            target = self._target[i]
            if (complete and key != target) or (not complete and not target.startswith(key)):
                return self._release(0)
        return ""

    def finish(self) -> str:
        """The narrative ended while still matching the prelude: it only repeated it."""
        if self.active:
            self.dropped, self._buf, self.active = self._buf, "", False
        return ""

    def _release(self, start: int) -> str:
        self.dropped = self._buf[:start]
        out, self._buf, self.active = self._buf[start:], "", False
        return out
