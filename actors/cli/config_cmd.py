"""``skald config get [KEY]`` and ``skald config set KEY VALUE``: the settings of a running
``skald serve``, over its control socket (``wire.ConfigGet``/``wire.ConfigSet``).

``set`` is validated by the server exactly like start-up configuration and refused for keys
that need a restart (``config.settings.LIVE_KEYS`` lists the live ones); the error is printed as
start-up prints it (``skald: config error: ...``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from actors import wire


def add_config_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``skald config get|set`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config", help="show or change the settings of a running `skald serve` (live keys only)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("get", help="print the settings in force (one KEY, or all), marked live or restart")
    get.add_argument("key", nargs="?", default="", help="dotted key, e.g. prebuffer.start_s")
    get.add_argument("--json", action="store_true", help="print JSON: values, live, origins")
    put = verbs.add_parser("set", help="change a live setting; keys that need a restart are refused")
    put.add_argument("key", help="dotted key, e.g. prebuffer.start_s")
    put.add_argument("value", help="the new value, written as in a SKALD_* variable (1.0, true, balanced)")
    put.add_argument("--json", action="store_true", help="print the config_changed event as JSON")
    for p in (get, put):
        p.add_argument("--endpoint", help="control endpoint (default: the serve run dir's control.sock)")
        p.add_argument("--run-dir", help="the server's run dir")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server's reply")
        p.set_defaults(func=cmd_config)
    return parser


def _client(args: argparse.Namespace) -> Any:
    """A control client of the server ``--endpoint``/``--run-dir`` name, with the CurveZMQ keys
    a ``tcp://`` endpoint needs (``supervisor.curve_*``), as ``skald status`` makes it."""
    from actors.client import SkaldClient
    from actors.security import ClientKeys, SecurityError
    from config.settings import ConfigError, load_settings
    from supervisor import default_run_dir, endpoints

    try:
        settings = load_settings(args.config, overrides={"supervisor.run_dir": args.run_dir} if args.run_dir else {})
    except ConfigError as exc:
        raise SystemExit(f"skald: {exc}") from None
    endpoint = args.endpoint or endpoints(settings, default_run_dir(settings, shared=True)).control
    curve = None
    if endpoint.startswith("tcp://"):
        sup = settings.supervisor
        try:
            curve = ClientKeys.load(sup.curve_client_key, sup.curve_server_public_key)
        except SecurityError as exc:
            raise SystemExit(f"skald: {exc}") from None
    return SkaldClient(endpoint, timeout_s=args.timeout, curve=curve)


def cmd_config(args: argparse.Namespace) -> int:
    from actors.client import SkaldClientError

    request: wire.Message = (
        wire.ConfigGet(key=args.key) if args.verb == "get" else wire.ConfigSet(values={args.key: args.value})
    )
    try:
        with _client(args) as client:
            reply = client.request(request)
    except SkaldClientError as exc:
        if exc.error is not None and exc.error.message.startswith("config error:"):
            print(f"skald: {exc.error.message}", file=sys.stderr)  # as start-up prints it
            return 2
        print(f"skald config {args.verb}: {exc}", file=sys.stderr)
        return 1
    if isinstance(reply, wire.ConfigValues):
        _print_values(reply, args.json)
    elif isinstance(reply, wire.ConfigChanged):
        _print_changed(reply, args.json)
    return 0


def _print_values(reply: wire.ConfigValues, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"values": reply.values, "live": reply.live, "origins": reply.origins}, indent=2))
        return
    live = set(reply.live)
    width = max((len(k) for k in reply.values), default=0)
    for key, value in reply.values.items():
        kind = "live" if key in live else "restart"
        origin = f"  ({reply.origins[key]})" if key in reply.origins else ""
        print(f"{key:<{width}} = {json.dumps(value)}  [{kind}]{origin}")


def _print_changed(reply: wire.ConfigChanged, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": reply.KIND.decode(), **{f: getattr(reply, f) for f in reply.__struct_fields__}}))
        return
    if not reply.changed:
        print("unchanged (the server already had that value)")
    for key, value in reply.changed.items():
        print(f"{key}: {json.dumps(reply.previous.get(key))} -> {json.dumps(value)}")
