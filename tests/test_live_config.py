"""Runtime settings: ``skald config get/set`` and SIGHUP against a real ``skald serve`` (null sink,
real Piper), and the pieces that apply them (pre-buffer retune, GPU control retune).

The pre-buffer test shows the change in the audio itself: the first chunk ("Halt.") is shorter
than the new start threshold, so after ``skald config set prebuffer.start_s 1.0`` playback must
wait for the second chunk's synthesis, and the measured TTFA grows by about that synthesis time.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import tests.conftest as conftest
from actors import wire
from actors.audio.prebuffer import PlaybackState, PrebufferConfig, PrebufferPolicy
from config.settings import LIVE_KEYS, ConfigError, check_live_change, load_settings
from tests.conftest import ROOT, SKALD, server_env

TEXT = (
    "Halt. The ancient door of the crypt groans open, and cold air rolls out across the worn "
    "flagstones. Somewhere below, water drips into a still black pool."
)
# A short first chunk ("Halt.", well under a second) so a 1 s pre-buffer has to wait for chunk 2.
SHORT_FIRST_CHUNK = {"SKALD_CHUNKER_FIRST_CHUNK_S": "0.3", "SKALD_CHUNKER_FIRST_CHUNK_MAX_S": "0.8"}


def _skald(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SKALD, *args], capture_output=True, text=True, cwd=ROOT, env=server_env(), timeout=60)


def _speak(server: Any, client: Any) -> tuple[float, list[wire.ChunkSynthesized]]:
    """Speak TEXT and wait for it to finish; its TTFA (ms) and its chunks' synthesis events."""
    rid = client.speak(TEXT)
    finished, seen = client.wait_for(rid, timeout_s=60)
    assert finished.status == "done", server.log()
    chunks = [e for e in seen if isinstance(e, wire.ChunkSynthesized) and e.request_id == rid]
    return finished.ttfa_ms, sorted(chunks, key=lambda c: c.index)


def test_config_set_prebuffer_changes_the_next_requests_ttfa(make_server: Any) -> None:
    server = make_server("--sink", "null", **SHORT_FIRST_CHUNK)
    with server.client(timeout_s=30) as client, client.__class__.for_run_dir(str(server.run_dir), 30) as watcher:
        ttfa_before, chunks_before = _speak(server, watcher)
        first_s = chunks_before[0].dur_s
        assert first_s < 1.0, f"the first chunk is {first_s:.2f} s: too long to show a 1 s pre-buffer"

        out = _skald("config", "set", "prebuffer.start_s", "1.0", "--run-dir", str(server.run_dir))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "prebuffer.start_s: 0.5 -> 1.0"
        changed = next(e for e in watcher.events(timeout_s=10) if isinstance(e, wire.ConfigChanged))
        assert changed.changed == {"prebuffer.start_s": 1.0} and changed.source == "skald config set"
        assert client.request(wire.ConfigGet(key="prebuffer.start_s")) == wire.ConfigValues(
            values={"prebuffer.start_s": 1.0},
            live=["prebuffer.start_s"],
            origins={"prebuffer.start_s": "skald config set"},
        )

        ttfa_after, chunks_after = _speak(server, watcher)
    print(
        f"\nfirst chunk {first_s:.3f} s; TTFA with start_s 0.5: {ttfa_before:.0f} ms, with 1.0: {ttfa_after:.0f} ms; "
        f"chunk 2 synthesized in {chunks_after[1].synth_ms:.0f} ms"
    )
    # Chunks are synthesized one after the other (CPU tier), so the second chunk's audio exists no
    # sooner than both syntheses after acceptance. With 0.5 s, playback started before that (the
    # first chunk was enough); with 1.0 s it cannot have: it waited for the second chunk. Both
    # sides of each comparison grow alike when the machine is loaded.
    two_chunks_before = chunks_before[0].synth_ms + chunks_before[1].synth_ms
    two_chunks_after = chunks_after[0].synth_ms + chunks_after[1].synth_ms
    assert ttfa_before < two_chunks_before, (ttfa_before, two_chunks_before)
    assert ttfa_after >= two_chunks_after - 10.0, (ttfa_after, two_chunks_after)


def test_restart_only_keys_and_bad_values_are_refused_like_start_up(make_server: Any) -> None:
    server = make_server()
    run_dir = ("--run-dir", str(server.run_dir))

    out = _skald("config", "set", "audio.blocksize", "256", *run_dir)
    assert out.returncode == 2
    assert "audio.blocksize is read once at start-up: a restart is needed" in out.stderr
    assert "SKALD_AUDIO_BLOCKSIZE" in out.stderr

    # The same value refused at start-up and live: the same message but for where it came from.
    live = _skald("config", "set", "prebuffer.start_s", "99", *run_dir)
    start = subprocess.run(
        [*SKALD, "speak", "--sink", "null", "Hello."],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=server_env(SKALD_PREBUFFER_START_S="99"),
        timeout=60,
    )
    assert live.returncode == 2 and start.returncode != 0
    refused = "skald: config error: prebuffer.start_s = 99.0 (from skald config set): must be between 0 and 30"
    assert live.stderr.strip() == refused
    assert start.stderr.strip() == live.stderr.strip().replace("skald config set", "SKALD_PREBUFFER_START_S")

    # Cross-key checks too, and a voice that does not exist.
    low = _skald("config", "set", "prebuffer.low_water_s", "0.8", *run_dir)
    assert "prebuffer.low_water_s = 0.8 (from skald config set): must be below prebuffer.start_s" in low.stderr
    voice = _skald("config", "set", "tts.voice", "nobody", *run_dir)
    assert voice.returncode == 2 and "tts.voice = 'nobody' (from skald config set): unknown Piper voice" in voice.stderr
    unknown = _skald("config", "set", "prebuffer.start", "1", *run_dir)
    assert "unknown setting 'prebuffer.start'; known: prebuffer.start_s" in unknown.stderr

    # Booleans read like SKALD_* variables: "off" is false.
    off = _skald("config", "set", "dsp.trim_silence", "off", *run_dir)
    assert off.returncode == 0 and off.stdout.strip() == "dsp.trim_silence: true -> false", off.stderr
    # Nothing refused was applied; `config get` marks what changes live.
    assert _skald("config", "get", "prebuffer.start_s", *run_dir).stdout == "prebuffer.start_s = 0.5  [live]\n"
    assert _skald("config", "get", "audio.blocksize", *run_dir).stdout == "audio.blocksize = 128  [restart]\n"
    got = _skald("config", "get", "--json", *run_dir)
    values = json.loads(got.stdout)["values"]
    assert (values["audio.blocksize"], values["prebuffer.start_s"], values["prebuffer.low_water_s"]) == (128, 0.5, 0.0)
    assert values["tts.voice"] == "en_US-joe-medium"


def test_sighup_rereads_the_config_file(make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "skald.toml"
    config.write_text("[prebuffer]\nstart_s = 0.5\n\n[dsp]\ncrossfade_ms = 30.0\n")
    # --config is an option of `skald` itself, before the subcommand the server fixture adds.
    monkeypatch.setattr(conftest, "SKALD", [*SKALD, "--config", str(config)])
    server = make_server()
    with server.client() as client:
        config.write_text("[prebuffer]\nstart_s = 2.0\n\n[dsp]\ncrossfade_ms = 20.0\n\n[audio]\nblocksize = 256\n")
        server.proc.send_signal(signal.SIGHUP)
        changed = next(e for e in client.events(timeout_s=10) if isinstance(e, wire.ConfigChanged))
        assert changed.changed == {"prebuffer.start_s": 2.0, "dsp.crossfade_ms": 20.0}
        assert changed.previous == {"prebuffer.start_s": 0.5, "dsp.crossfade_ms": 30.0}
        assert changed.source == f"SIGHUP {config}"
        assert changed.restart_needed == ["audio.blocksize"]
        reply = client.request(wire.ConfigGet())
        assert isinstance(reply, wire.ConfigValues)
        assert reply.values["prebuffer.start_s"] == 2.0 and reply.values["audio.blocksize"] == 128
        assert reply.origins["prebuffer.start_s"] == str(config)

        # A bad file changes nothing and says why, in the start-up words.
        config.write_text("[prebuffer]\nstart_s = 45\n")
        server.proc.send_signal(signal.SIGHUP)
        error = next(e for e in client.events(timeout_s=10) if isinstance(e, wire.Error))
        assert error.message == (
            f"SIGHUP {config}: config error: prebuffer.start_s = 45.0 (from {config}): must be between 0 and 30; "
            "nothing changed"
        )
        again = client.request(wire.ConfigGet(key="prebuffer.start_s"))
        assert isinstance(again, wire.ConfigValues) and again.values == {"prebuffer.start_s": 2.0}
    assert server.proc.poll() is None  # SIGHUP does not stop the server


def test_live_keys_are_known_keys_and_refusals_name_the_restart() -> None:
    every = set(load_settings(env={}).to_dict())  # sections
    assert {k.split(".")[0] for k in LIVE_KEYS} <= every
    for key in LIVE_KEYS:
        check_live_change(key)  # no error
    with pytest.raises(ConfigError, match=r"ring\.capacity_s is read once at start-up: a restart is needed"):
        check_live_change("ring.capacity_s")


def test_prebuffer_retune_applies_to_a_start_still_buffering() -> None:
    policy = PrebufferPolicy(PrebufferConfig(start_s=0.5))
    assert policy.step(0.3, input_complete=False, has_audio_expected=True) is PlaybackState.BUFFERING
    policy.retune(PrebufferConfig(start_s=1.0, resume_s=0.5))
    assert policy.step(0.7, input_complete=False, has_audio_expected=True) is PlaybackState.BUFFERING
    assert policy.step(1.0, input_complete=False, has_audio_expected=True) is PlaybackState.PLAYING
    assert policy.config.start_s == 1.0


def test_gpu_profile_retunes_the_utilization_band_and_vram_limit() -> None:
    from tests.test_gpu_control import l4_hooks

    hooks, memory = l4_hooks()  # Mid-Range: 60-80 %, 6144 MiB
    assert (hooks.util.policy.low, hooks.util.policy.high) == (60.0, 80.0)
    hooks.retune(load_settings(env={"SKALD_GPU_PROFILE": "modest"}))  # Modest: 40-60 %, 3584 MiB
    assert (hooks.util.policy.low, hooks.util.policy.high) == (40.0, 60.0)
    assert hooks.vram.limit_mb == 3584.0
    assert memory.fraction == pytest.approx(3584.0 / memory.total)
    assert hooks.status()["profile"] == "modest"
    hooks.retune(load_settings(env={"SKALD_GPU_UTIL_TARGET_LOW": "70", "SKALD_GPU_UTIL_TARGET_HIGH": "90"}))
    assert (hooks.util.policy.low, hooks.util.policy.high) == (70.0, 90.0)


def test_the_worker_takes_joiner_chunker_and_voice_settings_for_its_next_request(tmp_path: Path) -> None:
    """In-process TtsWorker with real Piper and a real ring: after ``apply_config`` the next
    request's joiner has the new crossfade and pauses, its chunker the new first-chunk length, and
    requests that name no voice get the new default voice (the bundled model by its path)."""
    import os

    from actors.tts import create_engine
    from actors.tts.piper import _bundled_voices
    from actors.tts_worker import TtsWorker
    from shm import PcmRing

    settings = load_settings(env={})
    ring = PcmRing.create(f"skald-{os.getpid()}-live", 1 << 17, 22050, 4.0, role="producer")
    sent: list[wire.Message] = []
    worker = TtsWorker(settings, create_engine("piper", settings), ring, sent.append)
    try:
        worker.handle(wire.OpenRequest(request_id="before"))
        before = worker.requests["before"]
        assert before.joiner.crossfade == round(0.030 * 22050)

        model_path = str(_bundled_voices()["en_US-joe-medium"])
        changed = settings.replace(
            {"dsp.crossfade_ms": "10", "dsp.pause_sentence_ms": "600", "chunker.first_chunk_s": "2.0",
             "tts.voice": model_path},
            "skald config set",
        )  # fmt: skip
        worker.handle(wire.ConfigUpdate(settings=changed.to_dict(), changed=["dsp.crossfade_ms"]))
        worker.handle(wire.OpenRequest(request_id="after"))
        after = worker.requests["after"]
        assert after.joiner.crossfade == round(0.010 * 22050)
        assert after.joiner.pauses["sentence"] == round(0.600 * 22050)
        assert worker.chunker_config.first_chunk_s == 2.0
        assert worker.default_voice == model_path and after.voice == model_path
        assert before.joiner.crossfade == round(0.030 * 22050)  # a request in flight keeps its joiner
        assert not [m for m in sent if isinstance(m, wire.Error)]
    finally:
        worker.close()
        ring.close()
        ring.unlink()
