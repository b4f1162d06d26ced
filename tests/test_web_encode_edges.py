"""The web encoder (actors/web/encode.py) when FFmpeg refuses a codec set-up: the error reaches the
caller and the half-made output container is closed, not leaked (an FFmpeg build without a codec,
or options it rejects, must not leave a muxer context behind per request).

The refusal is real FFmpeg (an unknown codec name, an option libopus rejects); the plan that asks
for it is swapped in with monkeypatch, and ``_ClosingSpy`` is a test fake that only records calls
to the real container's ``close`` while passing everything through.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import pytest

import actors.web.encode as encode
from actors.web.encode import make_encoder


class _ClosingSpy:
    """Test fake: wraps the real output container and counts ``close()`` calls."""

    def __init__(self, container: Any, opened: list[_ClosingSpy]) -> None:
        self._container = container
        self.closes = 0
        opened.append(self)

    def close(self) -> None:
        self.closes += 1
        self._container.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[_ClosingSpy]:
    made: list[_ClosingSpy] = []
    real_open = av.open
    monkeypatch.setattr(encode.av, "open", lambda *a, **k: _ClosingSpy(real_open(*a, **k), made))
    return made


@pytest.mark.parametrize(
    ("plan", "error"),
    [
        (encode._CodecPlan("ogg", "no-such-codec", 48_000, 32_000), "no-such-codec"),
        # libopus takes 2.5, 5, 10, 20, 40, 60 (and 80-120) ms frames; 7 ms is refused at open.
        (encode._CodecPlan("ogg", "libopus", 48_000, 32_000, {}, {"frame_duration": "7"}), "avcodec_open2"),
    ],
)
def test_a_refused_codec_set_up_raises_and_closes_the_container(
    monkeypatch: pytest.MonkeyPatch, opened: list[_ClosingSpy], plan: Any, error: str
) -> None:
    monkeypatch.setitem(encode._PLANS, "opus", plan)
    with pytest.raises(ValueError, match=error):  # PyAV's errors here are ValueErrors
        make_encoder("opus", 22050)
    assert [spy.closes for spy in opened] == [1]


def test_a_working_set_up_keeps_its_container_open_until_finish(opened: list[_ClosingSpy]) -> None:
    enc = make_encoder("opus", 22050)
    assert [spy.closes for spy in opened] == [0]
    assert enc.encode(np.zeros(2205, np.float32)).startswith(b"OggS")
    enc.finish()
    assert opened[0].closes == 1
