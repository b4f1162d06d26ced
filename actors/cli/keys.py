"""``skald keys generate DIR``: CurveZMQ certificates for a ``tcp://`` control plane (actors/security.py)."""

from __future__ import annotations

import argparse
from typing import Any


def add_keys_parser(sub: Any) -> argparse.ArgumentParser:
    keys = sub.add_parser("keys", help="CurveZMQ certificates for tcp:// control and events endpoints")
    action = keys.add_subparsers(dest="keys_action", required=True)
    generate = action.add_parser("generate", help="write a server and a client certificate pair into DIR (0700)")
    generate.add_argument("dir", help="directory for the certificates (created, mode 0700)")
    keys.set_defaults(func=cmd_keys)
    return keys


def cmd_keys(args: argparse.Namespace) -> int:
    from actors.security import generate

    paths = generate(args.dir)
    print(f"""CurveZMQ certificates in {args.dir}:
  server: {paths['server_secret']} (secret, keep on the server), {paths['server_public']} (public)
  client: {paths['client_secret']} (secret, give to the client), {paths['client_public']} (public)
  allowed clients: {paths['clients_dir']} (one public .key per client; add more to admit them)

On the server (e.g. in a --config TOML file):
  [supervisor]
  control_endpoint = "tcp://0.0.0.0:5555"
  events_endpoint = "tcp://0.0.0.0:5556"
  curve_server_key = "{paths['server_secret']}"
  curve_clients_dir = "{paths['clients_dir']}"

On a client:
  [supervisor]
  control_endpoint = "tcp://SERVER:5555"
  events_endpoint = "tcp://SERVER:5556"
  curve_client_key = "{paths['client_secret']}"
  curve_server_public_key = "{paths['server_public']}\"""")
    return 0
