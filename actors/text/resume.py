"""Where to pick a request's text up again after the TTS worker died mid-request.

The supervisor keeps every piece of text it handed the worker (prelude, then narrative, as
written) and, from the events, the ``source`` of each chunk the worker finished pushing into the
ring. A restarted worker must speak the rest: the text after those chunks. The chunker's
``source`` is the text as written but after text preparation (markdown and emoji removed,
whitespace collapsed), so it is not a substring of the raw text. What both keep, in order, are
the letters and digits: the cut is found by walking the raw text's letters and digits along
those of the finished chunks' sources. Lexicon and number rewriting never touch ``source`` (it is
what was written), so the walk matches whenever the chunks came from this text; when it does not,
``None`` says so and the caller fails the request rather than guess.
"""

from __future__ import annotations

from collections.abc import Sequence


def resume_point(parts: Sequence[str], spoken_sources: Sequence[str]) -> tuple[int, int] | None:
    """``(part, offset)``: the rest of the text starts at ``parts[part][offset:]`` (later parts
    whole). ``parts`` are the raw texts in speaking order (prelude, narrative); ``spoken_sources``
    the ``source`` of every chunk already spoken, in order. ``None`` if they do not line up."""
    wanted = [c for c in "".join(spoken_sources) if c.isalnum()]
    i = 0
    for p, raw in enumerate(parts):
        pos = 0
        while i < len(wanted) and pos < len(raw):
            ch = raw[pos]
            pos += 1
            if not ch.isalnum():
                continue
            if ch != wanted[i]:
                return None
            i += 1
        if i == len(wanted):
            # The punctuation stuck to the last spoken word ("stone." or "cold,") was spoken with it.
            while pos < len(raw) and not raw[pos].isspace() and not raw[pos].isalnum():
                pos += 1
            if pos == len(raw) and p + 1 < len(parts):
                return p + 1, 0
            return p, pos
    return None if wanted else (0, 0)
