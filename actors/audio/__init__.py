"""The audio room: what happens to samples between a TTS engine and the speaker.

Which module runs where (the consumer process imports only the right-hand column, so it never
loads soxr or an engine)::

    TTS worker process                                              audio consumer process
    ┌─────────────── joiner.ChunkJoiner (one per request) ──────────────┐
    engine ─> to_mono ─> DcBlocker ─> silence trim ─> equal-power ─> [resample.Resampler] ─> PcmRing
    blocks    (pcm)      per chunk    to a natural    crossfade       soxr, engine rate        │
                                      pause                           → ring rate              │
                                                      callback (output.py, no allocation): <───┘
                                                      fade, [IntegerUpsampler], Int16Converter ─> device

* ``pcm`` — shared basics, numpy only: ``DspError``, the internal rate range (16–24 kHz,
  ``validate_rate``), ``to_mono``.
* ``joiner`` — worker side: ``ChunkJoiner``, ``ChunkSpan``, ``DcBlocker``, the pause table.
  Pause kinds come from ``actors.text.punctuation`` (``PAUSE_KINDS``, ``pause_kind``).
* ``resample`` — worker side: ``Resampler`` / ``resample`` (soxr).
* ``output`` — callback side: ``Int16Converter`` / ``float_to_int16`` (skald's one float → int16
  conversion), ``IntegerUpsampler``. numpy only.
* ``prebuffer`` — the consumer's playback state machine; ``device`` — output device selection.

Every sample rate inside skald (engine, ring) is 16–24 kHz; other rates are made at the edges by
``Resampler`` / ``resample``, or, for a device that refuses the ring rate, at a whole multiple of
it by ``IntegerUpsampler`` inside the audio callback. Figures: docs/audio-quality.md.
"""
