"""How the chunker ranks candidate cuts: one key function per situation, smaller is better.

Each key function takes a candidate's strength (``WORD`` … ``SENTENCE``), whether it is protected,
whether the text after it may be too short (``hard_min_s``), the chunk's estimated length and the
cut's position, and returns a tuple (smaller = better) or None (not allowed). Lengths over the
limit (``first_chunk_max_s`` for the first chunk, else ``hard_max_s``) never reach them: the
chunker's ``_select`` skips those candidates. The phantom keys are
the best any position not classified yet could get: a candidate wins only if it beats them too, so
streaming and batch plans agree (see :class:`actors.text.chunker.SemanticChunker`).
"""

from __future__ import annotations

import math
from typing import Any

from actors.text.plan import SENTENCE, WORD, ChunkerConfig

__all__ = ["FIRST_PAUSE_MIN", "CutRanking", "Key", "phantom", "phantom_first"]

Key = tuple[Any, ...]
_INF = math.inf
# A pause point before the first-chunk window is taken when it is at least this share of
# first_chunk_s: shorter ("Yes,") leaves the second chunk too little time to get ready.
FIRST_PAUSE_MIN = 0.5


class CutRanking:
    """The key functions; mixed into the chunker, which sets ``_cfg`` and ``_index``."""

    _cfg: ChunkerConfig
    _index: int

    def _key_first(self, st: int, prot: bool, rs: bool, length: float, c: float) -> Key | None:
        cfg = self._cfg
        # A pause point anywhere up to first_chunk_max_s beats every bare word cut ("The map —" over
        # "The map — drawn in faded"): in the window the first one, before it the latest one that is
        # not a mere word or two. Then word cuts the same way; protected places (inside a short
        # quotation, after a title, inside a phrase) only when nothing else is left.
        inwin = length >= cfg.first_chunk_s
        if cfg.first_sentence and inwin and st == SENTENCE and not prot:
            return (-1, c)  # the first whole sentence in the window beats every other cut
        pause = st != WORD and (inwin or length >= FIRST_PAUSE_MIN * cfg.first_chunk_s)
        tier = (0 if pause else 2) + (4 if prot else 0)
        return (tier, c) if inwin else (tier + 1, -length)

    def _s0(self, st: int, prot: bool, rs: bool, length: float) -> bool:
        cfg = self._cfg
        # The chunk after the (deliberately short) first one has the least time to get ready: it takes
        # its sentence end at once instead of waiting to see whether the text ends right after it.
        rest_ok = not rs or self._index == 1
        return st == SENTENCE and not prot and rest_ok and cfg.target_min_s <= length <= cfg.target_max_s

    def _key_a(self, st: int, prot: bool, rs: bool, length: float, c: float) -> Key | None:
        return (0, length, c) if self._s0(st, prot, rs, length) else None

    def _key_b(self, st: int, prot: bool, rs: bool, length: float, c: float) -> Key | None:
        cfg = self._cfg
        if self._s0(st, prot, rs, length):
            return (0, length, c)
        if prot or rs or st == WORD or not cfg.target_min_s <= length <= cfg.target_max_s:
            return None
        ideal = (cfg.target_min_s + cfg.target_max_s) / 2
        return (1, 3 - st, abs(length - ideal), c)

    def _key_c(self, st: int, prot: bool, rs: bool, length: float, c: float) -> Key | None:
        cfg = self._cfg
        if length < cfg.hard_min_s:
            return (2, -length, c)
        if self._s0(st, prot, rs, length):
            return (0, length, c)
        inband = cfg.target_min_s <= length <= cfg.target_max_s
        tier = (0 if inband else 1, 3 - st) if st != WORD else (2 if inband else 3, 0)
        if inband:
            dist = abs(length - (cfg.target_min_s + cfg.target_max_s) / 2)
        else:
            dist = cfg.target_min_s - length if length < cfg.target_min_s else length - cfg.target_max_s
        return (1, prot, tier, rs, dist, c)


def phantom_first(cfg: ChunkerConfig, lb: float) -> Key | None:
    """Best key any not-yet-classified position could get for the first chunk (``lb``: a lower
    bound of the estimate up to the first unclassified position)."""
    if lb > cfg.first_chunk_max_s:
        return None
    # With first_sentence, a sentence end not classified yet may still win over every cut seen.
    return (-1 if cfg.first_sentence else 0, _INF)


def phantom(case: str, cfg: ChunkerConfig, lb: float) -> Key | None:
    """Best key any not-yet-classified (or not yet arrived) position could get in ``case``."""
    if lb <= cfg.target_max_s:
        return (0, max(lb, cfg.target_min_s), _INF)
    if case == "C" and lb <= cfg.hard_max_s:
        return (1, False, (1, 0), False, 0.0, _INF)
    return None
