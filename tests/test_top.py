"""``skald top`` on a real terminal: run under tmux, read the screen back, quit with ``q``."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import wire
from tests.conftest import ROOT, sample_text, server_env, wait_until

pytestmark = pytest.mark.slow


class Tmux:
    """A private tmux server (its own socket), so nothing here touches anyone's sessions."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name, "-f", "/dev/null"]

    def __call__(self, *args: str) -> str:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True, env=server_env(), timeout=10)
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", "top", fmt).strip()


@pytest.fixture
def tmux(run_dir: Path) -> Iterator[Tmux]:
    term = Tmux(f"skald-top-{run_dir.parent.name}")
    yield term
    subprocess.run([*term.base, "kill-server"], capture_output=True, timeout=10)


def test_top_shows_actors_and_a_request_in_progress_and_quits_on_q(  # type: ignore[no-untyped-def]
    make_server, run_dir: Path, tmux: Tmux, tmp_path: Path
) -> None:
    server = make_server()
    # The pane's shell writes top's exit status to a file: tmux 3.3 may leave an exited pane
    # process unreaped (a zombie, no #{pane_dead_status}) for seconds; sh reaps its child at once.
    exit_file = tmp_path / "top.exit"
    top = shlex.join([sys.executable, "-m", "actors.cli", "top", "--run-dir", str(run_dir)])
    command = f"{top}; echo $? > {shlex.quote(str(exit_file))}"
    tmux("new-session", "-d", "-s", "top", "-x", "150", "-y", "45", "-c", str(ROOT), command)
    tmux("set-option", "-t", "top", "remain-on-exit", "on")  # the screen stays readable for failure messages
    pids = server.actor_pids()
    assert wait_until(lambda: "actors" in tmux.screen() and "q quits" in tmux.screen(), 30), tmux.screen()
    with server.client() as client:
        rid = client.speak(sample_text("crypt.txt"))
        for event in client.events(timeout_s=60):
            if isinstance(event, wire.PlaybackStarted) and event.request_id == rid:
                break

        def request_on_screen() -> bool:
            screen = tmux.screen()
            return rid in screen and "requests in flight: 1" in screen

        assert wait_until(request_on_screen, 30), tmux.screen()
        screen = tmux.screen()
        for role, pid in pids.items():
            row = next((line for line in screen.splitlines() if f" {role} " in line), "")
            assert str(pid) in row and "running" in row, (role, screen)
        request_row = next(line for line in screen.splitlines() if rid in line)
        assert "━" in request_row  # its chunk progress bar
        assert "ring fill" in screen and "TTFA p50" in screen
        tmux("send-keys", "-t", "top", "q")
        assert wait_until(lambda: exit_file.is_file() and exit_file.read_text().strip() != "", 15), tmux.screen()
        assert exit_file.read_text().strip() == "0", tmux.screen()
        client.cancel(rid)
    assert server.stop() == 0
