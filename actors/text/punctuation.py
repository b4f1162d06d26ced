"""The punctuation that decides pauses: one definition for text preparation, the chunker, the
language-model word release and the joiner's pause table.

A chunk (or a released run of model tokens) ends at a *sentence* after ``SENTENCE_END``, at a
*clause* after ``CLAUSE_END``; ``CLOSERS`` (closing quotes and brackets) may follow either and
still count as that end ("stop!" and "(at last)," end a sentence and a clause).
"""

from __future__ import annotations

SENTENCE_END = ".!?…"
CLAUSE_END = ",;:—–"
#: Closing quotes and brackets: skipped when looking for the mark that ends a sentence or clause.
CLOSERS = "\"')]}”’»›"
#: Opening quotes and brackets: looked through at a word's start.
OPENERS = "\"'([{“‘«‹„"
#: Dashes that pause when typed without spaces ("1204—or").
DASHES = "—–"
#: Every mark after which a speaker naturally pauses.
TERMINAL = frozenset(SENTENCE_END + CLAUSE_END)

#: What ended a chunk, and so which pause follows it (``actors.audio.joiner.DEFAULT_PAUSES_MS``).
PAUSE_KINDS = ("paragraph", "sentence", "clause", "conjunction", "word", "end")

# A hyphen left at a chunk's end (a dash typed as "-") and markdown emphasis left by a model
# ("*stop*") still read as a clause or sentence end to the joiner.
_PAUSE_CLAUSE_END = CLAUSE_END + "-"
_PAUSE_CLOSERS = CLOSERS + "*_"


def pause_kind(boundary: str, text: str = "") -> str:
    """The pause kind after a chunk: ``ChunkPlan.boundary`` if it is one, else derived from ``text``.

    ``ChunkPlan.boundary`` is "sentence" | "clause" | "conjunction" | "word" | "end" (what ended
    the chunk; "end" = the request's last chunk). The chunker does not report paragraph breaks,
    so "paragraph" is only used when a caller passes it. Any other ``boundary`` (e.g. "" from
    another chunker) is derived from the chunk text's last character, closing quotes and
    brackets skipped: ``. ! ? …`` → sentence, ``, ; : — –`` → clause, anything else → word; a
    text ending in a blank line → paragraph.
    """
    if boundary in PAUSE_KINDS:
        return boundary
    if text.endswith("\n\n") or text.rstrip(" \t").endswith("\n\n"):
        return "paragraph"
    stripped = text.rstrip().rstrip(_PAUSE_CLOSERS)
    if stripped and stripped[-1] in SENTENCE_END:
        return "sentence"
    if stripped and stripped[-1] in _PAUSE_CLAUSE_END:
        return "clause"
    return "word"
