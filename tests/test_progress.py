"""Progress on a real pseudo-terminal (``script``): the offline render's bar reaches 100 % with
every chunk done, start-up names what each actor loads, ``skald voice add`` shows its steps, and
neither a pipe nor ``--quiet`` gets a bar."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import ROOT, SKALD, sample_text, server_env

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_a_terminal(argv: list[str], tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    """Run ``argv`` under ``script`` (a pseudo-terminal for stdin, stdout and stderr); its exit
    status and the screen's lines as written (each redraw of a line is a line here)."""
    typescript = tmp_path / "typescript"
    command = " ".join(shlex.quote(a) for a in argv)
    run = subprocess.run(
        ["script", "-qefc", command, str(typescript)],
        capture_output=True,
        cwd=ROOT,
        env=server_env(TERM="xterm-256color", COLUMNS="120", **env),
        timeout=180,
    )
    screen = _ANSI.sub("", typescript.read_bytes().decode("utf-8", "replace")).replace("\r", "\n")
    return run.returncode, [line.rstrip() for line in screen.split("\n") if line.strip()]


def test_unpaced_render_bar_reaches_100_percent_on_a_terminal(tmp_path: Path) -> None:
    text = tmp_path / "story.txt"
    text.write_text(sample_text("crypt.txt"))
    wav = tmp_path / "out.wav"
    code, lines = _on_a_terminal([*SKALD, "speak", "--unpaced", "--sink", f"wav:{wav}", "--file", str(text)], tmp_path)
    assert code == 0, "\n".join(lines[-20:])
    # Start-up: each actor and what it loads, ticked off when it said READY.
    assert any(re.search(r"✓ tts_worker: loading Piper voice en_US-joe-medium: ready", line) for line in lines)
    assert any("audio_consumer: opening " + str(wav) in line for line in lines)
    bars = [line for line in lines if line.startswith("rendering")]
    assert bars, "\n".join(lines[-20:])
    last = re.search(r"(\d+)% (\d+)/(\d+) chunks\s+([\d.]+) s audio\s+([\d.]+)× real time", bars[-1])
    assert last is not None, bars[-1]
    percent, done, total, audio_s, speed = last.groups()
    assert percent == "100" and done == total and int(total) >= 3
    finished = next(line for line in lines if line.startswith("skald: done"))
    reported = float(re.search(r"([\d.]+) s of audio", finished).group(1))  # type: ignore[union-attr]
    assert abs(float(audio_s) - reported) < 0.5 and float(speed) > 0
    # On the way: partial bars with an ETA (the text is known, so the total is).
    assert any(re.search(r"\d+% \d+/\d+ chunks.*ETA \d+ s", line) for line in bars[:-1])
    print(f"\n{bars[-1]}\n{finished}")


def test_no_bar_in_a_pipe_or_with_quiet(tmp_path: Path) -> None:
    argv = [*SKALD, "speak", "--unpaced", "--sink", f"wav:{tmp_path / 'a.wav'}", "The door creaks open. Rain falls."]
    piped = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=server_env(), timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "rendering" not in piped.stderr and "\x1b[" not in piped.stderr
    assert re.search(r"chunk 1/\d: .* s of audio", piped.stderr)  # the per-chunk lines of old
    code, lines = _on_a_terminal([*argv, "--quiet"], tmp_path)
    assert code == 0
    assert not [line for line in lines if "rendering" in line or "chunk 1/" in line or "tts_worker" in line]
    assert any(line.startswith("skald: done") for line in lines)


def test_voice_add_shows_its_steps_on_a_terminal(xtts_tiny_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from actors.tts.base import CancelToken
    from actors.tts.piper import PiperEngine

    piper = PiperEngine(noise_scale=0.0, noise_w_scale=0.0)
    info = piper.load_voice("")
    audio = np.concatenate(list(piper.synthesize("The ferryman waited by the river.", info.name, CancelToken())))
    piper.close()
    ref = tmp_path / "ref.wav"
    sf.write(ref, audio, info.sample_rate)
    env = {"SKALD_XTTS_MODEL_DIR": str(xtts_tiny_dir), "SKALD_XTTS_DEVICE": "cpu"}
    env["SKALD_VOICES_DIR"] = str(tmp_path / "voices")
    code, lines = _on_a_terminal([*SKALD, "voice", "add", "bard", str(ref)], tmp_path, **env)
    assert code == 0, "\n".join(lines[-20:])
    assert any(line.startswith(f"✓ loading XTTS v2 model from {xtts_tiny_dir} on cpu") for line in lines), lines
    latents = "✓ computing 'bard''s conditioning latents from 1 reference(s) on cpu"
    assert any(line.startswith(latents) for line in lines)
    assert any("added XTTS voice 'bard'" in line for line in lines)
