"""The control plane off the machine (issue 14): ipc sockets in a 0700 run dir; a ``tcp://``
endpoint only with CurveZMQ, where an authorized client works and any other gets nothing."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import wire
from actors.client import SkaldClient, SkaldClientError
from actors.security import ClientKeys, generate
from tests.conftest import ROOT, SKALD, Server, server_env
from tests.test_http import free_port


def test_keys_generate_writes_private_certificates(tmp_path: Path) -> None:
    proc = subprocess.run([*SKALD, "keys", "generate", str(tmp_path / "k")], cwd=ROOT, env=server_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "curve_server_key" in proc.stdout and "curve_client_key" in proc.stdout
    keys = tmp_path / "k"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    assert (keys / "clients" / "client.key").read_bytes() == (keys / "client.key").read_bytes()


def test_the_run_dir_is_private(make_server: Callable[..., Server]) -> None:
    server = make_server()
    assert stat.S_IMODE(server.run_dir.stat().st_mode) == 0o700
    assert all(p.is_socket() for p in server.run_dir.glob("*.sock"))


def test_tcp_without_keys_refuses_to_start() -> None:
    env = server_env(SKALD_SUPERVISOR_CONTROL_ENDPOINT=f"tcp://127.0.0.1:{free_port()}")
    proc = subprocess.run([*SKALD, "serve", "--sink", "null"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert "curve_server_key" in proc.stderr and "skald keys generate" in proc.stderr, proc.stderr


@pytest.mark.timeout(300)
def test_curve_admits_the_authorized_client_only(make_server: Callable[..., Server], tmp_path: Path) -> None:
    ours = generate(tmp_path / "keys")
    stranger = generate(tmp_path / "stranger")  # a valid pair the server was never told about
    control, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    server = make_server(
        "--sink", "null",
        SKALD_SUPERVISOR_CONTROL_ENDPOINT=control, SKALD_SUPERVISOR_EVENTS_ENDPOINT=events,
        SKALD_SUPERVISOR_CURVE_SERVER_KEY=ours["server_secret"], SKALD_SUPERVISOR_CURVE_CLIENTS_DIR=ours["clients_dir"],
    )  # fmt: skip
    keys = ClientKeys.load(ours["client_secret"], ours["server_public"])
    with SkaldClient(control, events, timeout_s=10, curve=keys) as client:
        request_id = client.speak("Only friends hear this.")
        finished, _ = client.wait_for(request_id, timeout_s=60)
    assert finished.status == "done"
    # A stranger's keys, and no keys at all: no answer, and the server is fine.
    intruder = ClientKeys.load(stranger["client_secret"], ours["server_public"])
    for curve in (intruder, None):
        with SkaldClient(control, timeout_s=2, curve=curve) as client, pytest.raises(SkaldClientError):
            client.request(wire.StatusQuery())
    assert "DENIED" in server.log()
    with SkaldClient(control, timeout_s=10, curve=keys) as client:
        assert client.status()["actors"]["tts_worker"]["ready"]
