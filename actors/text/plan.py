"""What the chunker plans: its configuration, the chunk plan, and the strengths of cut points."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["CLAUSE", "CONJ", "SENTENCE", "STRENGTH_NAMES", "WORD", "ChunkPlan", "ChunkerConfig"]


@dataclass(frozen=True)
class ChunkerConfig:
    """Chunk length targets, in seconds of estimated speech."""

    target_min_s: float = 3.0  # preferred chunk length band
    target_max_s: float = 7.0
    hard_min_s: float = 2.4  # hard bounds (except the first chunk and the final remainder)
    hard_max_s: float = 8.0
    first_chunk_s: float = 1.2  # first chunk: first pause point after this …
    first_chunk_max_s: float = 2.5  # … but never later than this
    # The first chunk is the first whole sentence that ends between first_chunk_s and
    # first_chunk_max_s, when there is one (engines that stream within a chunk: its length no
    # longer decides the time to first audio, and a whole sentence keeps its intonation).
    first_sentence: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "first_sentence":
                if not isinstance(self.first_sentence, bool):
                    raise ValueError(f"ChunkerConfig.first_sentence must be a bool, got {self.first_sentence!r}")
                continue
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"ChunkerConfig.{f.name} must be a finite number > 0, got {v!r}")
        order = [
            ("hard_min_s", "target_min_s"),
            ("target_min_s", "target_max_s"),
            ("target_max_s", "hard_max_s"),
            ("first_chunk_s", "first_chunk_max_s"),
            ("first_chunk_max_s", "hard_max_s"),
        ]
        for lo, hi in order:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"ChunkerConfig.{hi} ({getattr(self, hi)}) must be >= {lo} ({getattr(self, lo)})")

    @classmethod
    def from_settings(cls, chunker: Any, streaming: bool = False) -> ChunkerConfig:
        """The bounds of ``[chunker]`` settings (``config.settings.ChunkerSettings``). A voice
        whose first audio leaves before its chunk is finished (``streaming``: streaming Piper)
        needs no short first chunk for latency: the first chunk is then the first whole sentence
        up to ``target_max_s`` (else the first pause after ``first_chunk_s``, as before), so whole
        sentences keep their intonation."""
        first_max = max(chunker.first_chunk_max_s, chunker.target_max_s) if streaming else chunker.first_chunk_max_s
        return cls(
            target_min_s=chunker.target_min_s,
            target_max_s=chunker.target_max_s,
            hard_min_s=chunker.hard_min_s,
            hard_max_s=chunker.hard_max_s,
            first_chunk_s=chunker.first_chunk_s,
            first_chunk_max_s=first_max,
            first_sentence=streaming,
        )


WORD, CONJ, CLAUSE, SENTENCE = 0, 1, 2, 3
STRENGTH_NAMES = {WORD: "word", CONJ: "conjunction", CLAUSE: "clause", SENTENCE: "sentence"}


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk to synthesize."""

    index: int  # 0-based within the request
    text: str  # speakable text for the engine
    est_s: float  # estimated duration
    boundary: str  # "sentence" | "clause" | "conjunction" | "word" | "end" | "voice" (what ended the chunk)
    voice: str | None = None  # voice from an inline [voice:NAME] tag; None = the request's voice
    # The prepared characters this chunk covers, before normalization ("1492" where ``text`` says
    # "fourteen ninety-two"). Concatenated over a request, every letter and digit of the input is
    # in it, in order (link URLs and voice tags aside, see ``actors.text.textprep``).
    source: str = ""
