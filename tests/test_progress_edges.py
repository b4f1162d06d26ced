"""``skald``'s progress output in-process (``actors.cli.progress``): what each actor is said to
load, the render listener's lines and bar for every event it reports, its figures, and the
start-up spinners on a real (not started) ``Supervisor``. rich draws on stderr, captured here."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import wire
from actors.cli.progress import RenderProgress, StartupProgress, interactive, loading_description, spinner
from config.settings import Settings, load_settings
from supervisor import Supervisor


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(env={}, overrides={"supervisor.run_dir": str(tmp_path / "run"), **overrides})


@pytest.mark.parametrize(
    ("role", "overrides", "said"),
    [
        ("web", {"web.http": "127.0.0.1:8080"}, "HTTP gateway on 127.0.0.1:8080"),
        ("tts_worker", {}, "loading Piper voice "),
        (
            "tts_render",
            {"tts.engine": "xtts", "xtts.device": "cpu"},
            "loading XTTS v2 model from (xtts.model_dir unset) on cpu",
        ),
        ("tts_worker", {"tts.engine": "xtts", "xtts.model_dir": "/m"}, "loading XTTS v2 model from /m on cuda"),
        ("audio_consumer", {"audio.sink": "device"}, "opening audio device (default output)"),
        ("audio_consumer", {"audio.sink": "device", "audio.device": "USB"}, "opening audio device USB"),
        ("audio_consumer", {"audio.sink": "null"}, "opening the null sink"),
        ("audio_consumer", {"audio.sink": "wav:/tmp/out.wav"}, "opening /tmp/out.wav"),
        ("prelude", {}, "text pass-through (nothing to load)"),
        ("prelude", {"actors.prelude.backend": "transformers"}, "loading language model (model unset) on auto"),
        (
            "narrative",
            {"actors.narrative.backend": "openai", "actors.narrative.endpoint": "http://127.0.0.1:8000/v1"},
            "language model (server default) at http://127.0.0.1:8000/v1",
        ),
        ("stage_tee", {}, "starting"),  # not an actor with settings of its own
    ],
)
def test_each_actor_says_what_it_loads(tmp_path: Path, role: str, overrides: dict[str, object], said: str) -> None:
    assert loading_description(role, _settings(tmp_path, **overrides)).startswith(said)


def test_not_interactive_when_quiet_or_in_a_pipe() -> None:
    assert interactive(quiet=True) is False
    assert interactive() is False  # pytest's captured stderr is not a terminal


def _events(progress: RenderProgress) -> None:
    for msg in (
        wire.Accepted(request_id="r", t_accepted=0.0),
        wire.ChunkPlanned(request_id="r", index=0, text="One.", est_s=1.0),
        wire.ChunkPlanned(request_id="r", index=1, text="Two.", est_s=3.0),
        wire.ChunkSynthesized(request_id="r", index=0, dur_s=1.5, synth_ms=120.0),
        wire.PlaybackStarted(request_id="r", ttfa_ms=80.0),
        wire.Underrun(request_id="r", frames=256, count=2),
        wire.AudioOutputRestored(device="USB", down_s=1.25, replayed_s=0.5),
        wire.Error(kind="engine_failed", message="boom", actor="tts_worker"),
    ):
        progress(msg)


def test_lines_report_each_chunk_and_each_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sup = Supervisor(_settings(tmp_path))
    with RenderProgress(sup, bar=False, lines=True) as progress:
        _events(progress)
        figures = progress.figures()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "  chunk 1/2:  1.50 s of audio in  120.0 ms",
        "  playback started, TTFA 80 ms",
        "  underrun #2",
        "  output device 'USB' is back after 1.25 s (0.50 s again)",
        "  error [engine_failed] tts_worker: boom",
    ]
    assert (figures["done"], figures["total"], figures["audio_s"]) == (1, 2, 1.5)
    assert figures["speed"] > 0 and figures["eta_s"] == pytest.approx(3.0 / figures["speed"])


def test_a_chunk_before_any_plan_has_an_unknown_total_and_finished_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = RenderProgress(Supervisor(_settings(tmp_path)), bar=False, lines=True)
    assert progress.figures()["eta_s"] == -1.0  # nothing rendered: no speed, no ETA
    progress(wire.ChunkSynthesized(request_id="r", index=0, dur_s=2.0, synth_ms=10.0))
    assert "chunk 1/?:" in capsys.readouterr().err
    progress(wire.RequestFinished(request_id="r", status="done"))
    assert (progress.figures()["done"], progress.figures()["total"]) == (1, 1)


def test_silent_without_lines_or_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with RenderProgress(Supervisor(_settings(tmp_path)), bar=False, lines=False) as progress:
        _events(progress)
    assert capsys.readouterr().err == ""


def test_the_bar_prints_events_but_not_the_ttfa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with RenderProgress(Supervisor(_settings(tmp_path)), bar=True, lines=True) as progress:
        progress(wire.RequestFinished(request_id="r", status="cancelled"))  # nothing planned: nothing drawn
        _events(progress)
        assert progress._progress is not None
        task = progress._progress.tasks[0]
        assert (task.total, task.completed) == (2, 1)
        assert task.fields["detail"].startswith("1/2 chunks  1.5 s audio") and "ETA" in task.fields["detail"]
    err = capsys.readouterr().err
    assert "underrun #2" in err and "error [engine_failed] tts_worker: boom" in err and "is back after" in err
    assert "TTFA" not in err and "chunk 1/2:" not in err  # the bar replaces the per-chunk lines


def test_startup_spinners_tick_off_each_actor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sup = Supervisor(_settings(tmp_path))
    with StartupProgress(sup, enabled=True) as startup:
        assert startup._on_ready in sup.ready_listeners
        roles = list(sup.children)
        for listener in list(sup.ready_listeners):
            listener(roles[0], {"load_s": 0.1})
            listener(roles[1], {"degraded": "streaming off"})
            listener("not-an-actor", {})  # ignored
        assert startup._progress is not None
        done = {t.description: t.completed for t in startup._progress.tasks}
    assert startup._on_ready not in sup.ready_listeners
    assert done[f"{roles[0]}: {loading_description(roles[0], sup.settings)}: ready"] == 1
    assert done[f"{roles[1]}: {loading_description(roles[1], sup.settings)}: ready [yellow](streaming off)[/]"] == 1
    assert sum(done.values()) == 2
    assert "ready" in capsys.readouterr().err


def test_disabled_startup_progress_and_spinner_do_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sup = Supervisor(_settings(tmp_path))
    with StartupProgress(sup, enabled=False) as startup:
        startup._on_ready("tts_worker", {})
        assert sup.ready_listeners == []
    ran = []
    with spinner("computing latents", enabled=False):
        ran.append(1)
    with spinner("computing latents", enabled=True):
        ran.append(2)
    assert ran == [1, 2]
    err = capsys.readouterr().err
    assert "computing latents" in err and err.count("computing latents") >= 1
