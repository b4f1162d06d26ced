"""CurveZMQ for the control plane when it leaves the machine (a ``tcp://`` endpoint).

On one machine skald's sockets are ipc files in a 0700 run dir: the file system is the lock. A
``tcp://`` control or events endpoint has no such lock, so the supervisor refuses to bind one
without CurveZMQ (elliptic-curve encryption and authentication, built into libzmq):

* ``skald keys generate DIR`` writes a server and a client certificate pair with
  ``zmq.auth.create_certificates`` (``*.key`` public, ``*.key_secret`` secret, mode 0600 in a
  0700 directory) and prints the settings that use them.
* The server: ``supervisor.curve_server_key`` (its ``.key_secret``) and, optionally,
  ``supervisor.curve_clients_dir`` (the public ``*.key`` of every client allowed; empty: any client
  that holds the server's public key). A ZAP handler thread (pyzmq's ``ThreadAuthenticator``)
  checks each connecting client; a refused one is logged (``skald.security``) and gets nothing.
* A client: ``supervisor.curve_client_key`` (its ``.key_secret``) and
  ``supervisor.curve_server_public_key`` (the server's ``.key``).

The local ipc sockets stay as they are (the actors and local tools use them); the tcp endpoints
are extra sockets of their own, so CURVE applies to them alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

log = logging.getLogger("skald.security")


class SecurityError(RuntimeError):
    """Keys are missing or unreadable; the message names the setting to change."""


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a CURVE server: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, client_secret_file: str, server_public_file: str) -> ClientKeys:
        if not client_secret_file or not server_public_file:
            raise SecurityError(
                "a tcp:// endpoint needs CurveZMQ keys: set supervisor.curve_client_key (this client's "
                ".key_secret) and supervisor.curve_server_public_key (the server's .key); "
                "`skald keys generate DIR` makes them"
            )
        public, secret = _load(client_secret_file, "supervisor.curve_client_key")
        server_public, _ = _load(server_public_file, "supervisor.curve_server_public_key")
        if secret is None:
            raise SecurityError(f"supervisor.curve_client_key = {client_secret_file}: holds no secret key")
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Before ``connect``: this socket speaks CURVE to the server."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


def _load(path: str, setting: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{setting} = {path}: cannot read a CurveZMQ certificate ({exc})") from None


def generate(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Make a server and a client certificate pair in ``directory`` (0700); returns their paths."""
    target = Path(directory)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.chmod(0o700)
    paths: dict[str, str] = {}
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(target, name)
        Path(secret).chmod(0o600)
        paths[f"{name}_public"], paths[f"{name}_secret"] = str(public), str(secret)
    clients = target / "clients"
    clients.mkdir(mode=0o700, exist_ok=True)
    allowed = clients / "client.key"
    allowed.write_bytes(Path(paths["client_public"]).read_bytes())
    paths["clients_dir"] = str(clients)
    return paths


class _DenialLog:
    """pyzmq's authenticator says DENIED at debug level; an operator wants to see it."""

    def __init__(self, target: logging.Logger) -> None:
        self._log = target

    def debug(self, msg: str, *args: Any) -> None:
        denied = msg.startswith("DENIED") or (msg.startswith("%s") and args and args[0] == "DENIED")
        (self._log.warning if denied else self._log.debug)("ZAP: " + msg, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class CurveServer:
    """The server side: the ZAP handler and the options of each tcp socket."""

    def __init__(self, ctx: zmq.Context[Any], server_secret_file: str, clients_dir: str) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        if not server_secret_file:
            raise SecurityError(
                "a tcp:// control or events endpoint needs CurveZMQ: set supervisor.curve_server_key "
                "(the server's .key_secret; `skald keys generate DIR` makes one), or use the default ipc endpoints"
            )
        self.public, secret = _load(server_secret_file, "supervisor.curve_server_key")
        if secret is None:
            raise SecurityError(f"supervisor.curve_server_key = {server_secret_file}: holds no secret key")
        self.secret = secret
        if clients_dir and not Path(clients_dir).is_dir():
            raise SecurityError(f"supervisor.curve_clients_dir = {clients_dir}: no such directory")
        self.auth = ThreadAuthenticator(ctx, log=_DenialLog(log))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=clients_dir or zmq.auth.CURVE_ALLOW_ANY)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Before ``bind``: this socket serves CURVE only."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()
