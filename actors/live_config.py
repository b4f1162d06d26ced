"""Runtime settings of a running supervisor: ``skald config get/set`` and SIGHUP.

The supervisor hands ``ConfigGet``/``ConfigSet`` requests to ``LiveSettings.handle`` and calls
``poll`` on each loop turn; SIGHUP's handler only calls ``request_reload`` (a flag), so the file
is re-read on the main loop, never inside a signal handler.

A change is validated exactly like start-up configuration: ``Settings.replace`` (types, ranges,
choices and the cross-key checks of ``config.settings``), the GPU knobs through
``resolve_gpu_config`` against the detection made at start, and a new default Piper voice by
reading its config (no model load). The messages are the start-up ones, with the origin
``skald config set`` (or the file's path on SIGHUP). Only ``config.settings.LIVE_KEYS`` change
live; ``skald config set`` refuses any other key with a message that says a restart is needed,
and a re-read file that changes one leaves it as it is and names it in the event.

A change that passes goes to every actor as one ``ConfigUpdate`` (the whole validated settings,
the keys that changed, the consumer's start threshold and the log level; each actor takes what
it needs), an actor restarted later is spawned with the new settings, and a ``config_changed``
event says what changed from what.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from actors import wire
from config.settings import (
    LIVE_KEYS,
    ConfigError,
    Settings,
    check_live_change,
    env_word,
    flat_values,
    load_settings,
    logging_level,
)

if TYPE_CHECKING:
    from actors.gpu.tiers import ResolvedGpuConfig

log = logging.getLogger("skald.config")

SET_SOURCE = "skald config set"


class SettingsHost(Protocol):
    """What ``LiveSettings`` reads and replaces on its supervisor."""

    settings: Settings
    gpu: ResolvedGpuConfig | None
    origins: dict[str, str]
    log_level: int


class LiveSettings:
    """Validates, applies and announces setting changes of one running supervisor.

    ``config_file`` and ``overrides`` are what the server was started with (``--config`` and the
    command line); SIGHUP re-reads them, with the environment, by the start-up precedence."""

    def __init__(
        self,
        host: SettingsHost,
        send: Callable[[wire.Message], None],
        publish: Callable[[wire.Message], None],
    ) -> None:
        self.host = host
        self.send = send
        self.publish = publish
        self.config_file: str | None = None
        self.overrides: dict[str, Any] = {}
        self._reload_requested = False
        self.reloads = 0  # SIGHUP re-reads done (applied or refused)

    # ------------------------------------------------------------------ requests
    def handle(self, msg: wire.Message) -> wire.Message:
        """A ``ConfigGet`` or ``ConfigSet`` request; ``WireError`` (bad_request) for a bad one."""
        if isinstance(msg, wire.ConfigGet):
            return self.get(msg.key)
        if isinstance(msg, wire.ConfigSet):
            return self.set(msg.values)
        raise wire.WireError("unknown_kind", f"{msg.KIND.decode()} is not a config request")

    def get(self, key: str = "") -> wire.ConfigValues:
        values = flat_values(self.host.settings)
        if key:
            if key not in values:
                try:
                    check_live_change(key)  # the unknown-key message, with the known keys
                except ConfigError as exc:
                    raise wire.WireError("bad_request", str(exc)) from None
            values = {key: values[key]}
        origins = {k: v for k, v in self.host.origins.items() if k in values}
        return wire.ConfigValues(values=values, live=sorted(LIVE_KEYS & values.keys()), origins=origins)

    def set(self, values: Mapping[str, Any], source: str = SET_SOURCE) -> wire.ConfigChanged:
        """Validate ``values`` (dotted key -> value) as a whole and apply them, or change nothing."""
        if not values:
            raise wire.WireError("bad_request", "config set: no setting given")
        try:
            for key in values:
                check_live_change(key)
            # A string is read as a SKALD_* variable would be ("yes" is a boolean's true there too).
            values = {k: env_word(k, v) if isinstance(v, str) else v for k, v in values.items()}
            new = self.host.settings.replace(values, source)
            origins = {**self.host.origins, **dict.fromkeys(values, source)}
            resolved = self._validate(new, origins)
        except ConfigError as exc:
            raise wire.WireError("bad_request", str(exc)) from None
        self.host.origins.update(dict.fromkeys(values, source))
        return self._apply(new, resolved, source)

    # ------------------------------------------------------------------ SIGHUP
    def request_reload(self) -> None:
        """Called from the SIGHUP handler: only a flag; ``poll`` does the work on the main loop."""
        self._reload_requested = True

    def poll(self) -> None:
        if self._reload_requested:
            self._reload_requested = False
            self.reload()

    def reload(self) -> wire.ConfigChanged | None:
        """Re-read the config file (and the environment, and the command line's overrides) and
        apply what changed among the live keys; None when the file is refused (nothing changes)."""
        self.reloads += 1
        source = f"SIGHUP {self.config_file}" if self.config_file else "SIGHUP (no --config file)"
        try:
            fresh = load_settings(self.config_file, overrides=self.overrides)
            current, wanted = flat_values(self.host.settings), flat_values(fresh)
            differ = [k for k in wanted if wanted[k] != current[k]]
            restart_needed = [k for k in differ if k not in LIVE_KEYS]
            live = {k: wanted[k] for k in differ if k in LIVE_KEYS}
            new = self.host.settings.replace(live, source) if live else self.host.settings
            from actors.gpu.tiers import setting_origins

            fresh_origins = setting_origins(self.config_file, overrides=self.overrides)
            origins = {k: v for k, v in self.host.origins.items() if k not in live}
            origins.update({k: fresh_origins[k] for k in live if k in fresh_origins})
            resolved = self._validate(new, origins)
        except ConfigError as exc:
            message = f"{source}: {exc}; nothing changed"
            log.error("%s", message)
            self.publish(wire.Error(kind="bad_request", message=message, actor="supervisor"))
            return None
        if restart_needed:
            log.warning(
                "%s: %s changed in the file; a restart is needed to apply it", source, ", ".join(restart_needed)
            )
        self.host.origins = origins
        return self._apply(new, resolved, source, restart_needed)

    # ------------------------------------------------------------------ shared
    def _validate(self, new: Settings, origins: Mapping[str, str]) -> ResolvedGpuConfig | None:
        """The checks start-up makes beyond ``Settings``: the GPU knobs against the tier (with the
        detection made at start) and that a new default Piper voice exists."""
        current = self.host.settings
        if new.tts.voice != current.tts.voice and new.tts.engine == "piper":
            from actors.tts import EngineError, engine_sample_rate

            try:
                engine_sample_rate("piper", new.tts.voice)
            except (EngineError, OSError, ValueError, KeyError) as exc:
                origin = origins.get("tts.voice")
                where = f" (from {origin})" if origin else ""
                raise ConfigError(f"config error: tts.voice = {new.tts.voice!r}{where}: {exc}") from None
        if self.host.gpu is None:
            return None
        from actors.gpu.tiers import resolve_gpu_config

        return resolve_gpu_config(new, self.host.gpu.detection, origins)

    def _apply(
        self,
        new: Settings,
        resolved: ResolvedGpuConfig | None,
        source: str,
        restart_needed: list[str] | None = None,
    ) -> wire.ConfigChanged:
        before, after = flat_values(self.host.settings), flat_values(new)
        changed = {k: v for k, v in after.items() if before[k] != v}
        self.host.settings = new
        if resolved is not None:
            self.host.gpu = resolved
        level = logging_level(new.log.level)
        if "log.level" in changed:
            self.host.log_level = level
            logging.getLogger().setLevel(level)
        if changed:
            start_s = resolved.config.prebuffer_s if resolved is not None else new.stage_start_s
            self.send(
                wire.ConfigUpdate(
                    settings=new.to_dict(), changed=sorted(changed), prebuffer_start_s=start_s, log_level=level
                )
            )
        event = wire.ConfigChanged(
            changed=changed,
            previous={k: before[k] for k in changed},
            source=source,
            restart_needed=list(restart_needed or []),
        )
        if changed or event.restart_needed:
            log.info(
                "settings changed (%s): %s",
                source,
                ", ".join(f"{k} {before[k]!r} -> {v!r}" for k, v in changed.items()) or "nothing live",
            )
            self.publish(event)
        return event
