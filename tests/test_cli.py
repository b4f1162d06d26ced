"""The skald CLI as a user runs it: chunk plans, clear errors, the protocol doc's example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, sample_text, server_env

SKALD = [sys.executable, "-m", "actors.cli"]


def _skald(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SKALD, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, env=server_env(**env), timeout=60
    )


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def test_chunk_prints_the_plan_as_json_lines() -> None:
    text = sample_text("crypt.txt")
    out = _skald("chunk", stdin=text)
    assert out.returncode == 0, out.stderr
    plans = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(plans) >= 3
    assert all(set(p) == {"text", "source", "est_s"} for p in plans)
    assert _letters("".join(p["source"] for p in plans)) == _letters(text)  # "text" is as spoken
    assert all(0 < p["est_s"] <= 8.0 for p in plans)
    assert plans[0]["est_s"] <= 2.6  # the first chunk is short so audio starts fast


def test_chunk_stream_emits_chunks_while_input_is_still_arriving() -> None:
    """Tokens are piped in slowly; the first chunk must come out long before the input ends."""
    proc = subprocess.Popen(
        [*SKALD, "chunk", "--stream"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=server_env(),
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    words = sample_text("crypt.txt").split(" ")
    first_line_at: float | None = None
    started = time.monotonic()
    import threading

    lines: list[str] = []

    def read() -> None:
        nonlocal first_line_at
        assert proc.stdout is not None
        for line in proc.stdout:
            if first_line_at is None:
                first_line_at = time.monotonic()
            lines.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    # In stream mode the command says on stderr when the voice is loaded and it reads its input.
    while "reading standard input" not in (line := proc.stderr.readline()):
        assert line, "skald chunk --stream exited before reading its input"
    feed_started = time.monotonic()
    for word in words:
        proc.stdin.write(word + " ")
        proc.stdin.flush()
        time.sleep(0.03)
    fed_all_at = time.monotonic()
    proc.stdin.close()
    reader.join(30)
    assert proc.wait(30) == 0
    assert first_line_at is not None and first_line_at < fed_all_at - 0.5, (
        f"first chunk at {first_line_at - started:.2f} s, input ended at {fed_all_at - started:.2f} s"
    )
    assert first_line_at > feed_started
    plans = [json.loads(line) for line in lines]
    assert _letters("".join(p["text"] for p in plans)) == _letters(" ".join(words))


def test_bad_config_and_bad_arguments_fail_clearly(tmp_path: Path) -> None:
    out = _skald("speak", "Hi.", SKALD_AUDIO_BLOCKSIZE="9999")
    assert out.returncode != 0
    assert "audio.blocksize = 9999 (from SKALD_AUDIO_BLOCKSIZE): must be between 64 and 1024" in out.stderr
    out = _skald("speak", "--file", str(tmp_path / "missing.txt"))
    assert out.returncode != 0 and "cannot read --file" in out.stderr
    out = _skald("speak", "--sink", "null", "   ")
    assert out.returncode == 2 and "[bad_request] text is empty" in out.stderr


def test_status_without_a_server_says_so(tmp_path: Path) -> None:
    out = _skald("status", "--run-dir", str(tmp_path / "none"), "--timeout", "0.5")
    assert out.returncode == 1 and "no answer from" in out.stderr


def test_status_and_the_protocol_doc_example_against_a_real_server(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    out = _skald("status", "--run-dir", str(server.run_dir))
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status["actors"]) == {"prelude", "narrative", "tts_worker", "audio_consumer"}
    assert all(a["ready"] for a in status["actors"].values())
    assert status["actors"]["audio_consumer"]["info"]["heavy_modules"] == []  # no engine in the audio process
    doc = (ROOT / "docs" / "protocol.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S)
    assert example is not None
    code = example.group(1)
    assert len(code.strip().splitlines()) <= 30
    script = tmp_path / "client.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script), str(server.run_dir)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "accepted" in run.stdout and "playback_started" in run.stdout
    assert "'status': 'done'" in run.stdout.splitlines()[-1]
