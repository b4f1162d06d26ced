"""Configuration: ``config/default.toml`` < ``--config FILE`` < ``SKALD_*`` environment < CLI.

Settings are frozen dataclasses, one per TOML section. Loading validates every key; an error
names the key, the value and what is allowed, e.g.::

    config error: audio.blocksize = 5000 (from SKALD_AUDIO_BLOCKSIZE): must be between 64 and 1024
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path(__file__).with_name("default.toml")
ENV_PREFIX = "SKALD_"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


@dataclass(frozen=True)
class SupervisorSettings:
    run_dir: str = ""
    ready_timeout_s: float = 60.0
    max_restarts: int = 3
    restart_backoff_s: float = 0.25
    shutdown_timeout_s: float = 3.0
    control_endpoint: str = ""
    events_endpoint: str = ""


@dataclass(frozen=True)
class ProtocolSettings:
    max_message_bytes: int = 1048576
    max_text_chars: int = 100000


@dataclass(frozen=True)
class RingSettings:
    capacity_s: float = 60.0
    max_fill_s: float = 30.0


@dataclass(frozen=True)
class TtsSettings:
    engine: str = "piper"
    voice: str = "en_US-joe-medium"
    noise_scale: float = -1.0
    noise_w_scale: float = -1.0
    fallback_engine: str = "piper"
    fallback_voice: str = "en_US-joe-medium"
    parallel_streams: int = -1


@dataclass(frozen=True)
class XttsSettings:
    model_dir: str = ""
    stream_chunk_tokens: int = 20
    device: str = "cuda"
    language: str = "en"


@dataclass(frozen=True)
class VoicesSettings:
    dir: str = ""


@dataclass(frozen=True)
class GpuSettings:
    # -1 = take the value from the detected (or profile-forced) tier; see actors/gpu.py, docs/gpu.md.
    profile: str = "auto"
    vram_limit_gb: float = -1.0
    prebuffer_s: float = -1.0
    util_target_low: float = -1.0
    util_target_high: float = -1.0


@dataclass(frozen=True)
class DspSettings:
    crossfade_ms: float = 30.0
    trim_silence: bool = True
    silence_db: float = -50.0
    lead_ms: float = 10.0
    pause_paragraph_ms: float = 700.0
    pause_sentence_ms: float = 300.0
    pause_clause_ms: float = 250.0
    pause_conjunction_ms: float = 100.0
    pause_word_ms: float = 50.0
    pause_end_ms: float = 200.0
    dither: bool = False


@dataclass(frozen=True)
class ChunkerSettings:
    target_min_s: float = 3.0
    target_max_s: float = 7.0
    hard_min_s: float = 2.4
    hard_max_s: float = 8.0
    first_chunk_s: float = 1.2
    first_chunk_max_s: float = 2.5


@dataclass(frozen=True)
class PrebufferSettings:
    start_s: float = 0.5
    resume_s: float = 0.5
    low_water_s: float = 0.0


@dataclass(frozen=True)
class AudioSettings:
    sink: str = "device"
    wav_paced: bool = True
    device: str = ""
    hostapi: str = ""
    blocksize: int = 128
    latency: str = "low"
    fade_ms: float = 8.0
    tail_pad_ms: float = 150.0
    device_rate: int = 0


@dataclass(frozen=True)
class TextActorSettings:
    backend: str = "text"
    model: str = ""
    endpoint: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = ""
    device: str = "auto"
    max_words: int = 12
    max_tokens: int = 400
    temperature: float = 0.8
    system_prompt: str = ""
    timeout_s: float = 30.0
    prefill: bool = True
    threads: int = 0


@dataclass(frozen=True)
class ActorsSettings:
    prelude: TextActorSettings = field(default_factory=TextActorSettings)
    narrative: TextActorSettings = field(default_factory=TextActorSettings)


@dataclass(frozen=True)
class Settings:
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    ring: RingSettings = field(default_factory=RingSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    xtts: XttsSettings = field(default_factory=XttsSettings)
    voices: VoicesSettings = field(default_factory=VoicesSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    dsp: DspSettings = field(default_factory=DspSettings)
    chunker: ChunkerSettings = field(default_factory=ChunkerSettings)
    prebuffer: PrebufferSettings = field(default_factory=PrebufferSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    actors: ActorsSettings = field(default_factory=ActorsSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-shaped), for passing to child processes and for reports."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        """Rebuild from ``to_dict()`` output (already validated by the parent)."""
        return _build(cls, data, "", {})

    def replace(self, overrides: Mapping[str, Any], source: str = "command line") -> Settings:
        """Return a copy with dotted-key overrides (``{"audio.sink": "null"}``), validated."""
        data = self.to_dict()
        origins: dict[str, str] = {}
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value, source)
            origins[dotted] = source
        return _validated(_build(Settings, data, "", origins), origins)


# (min, max) for numeric keys; choices for string keys. Checked after every merge.
_RANGES: dict[str, tuple[float, float]] = {
    "supervisor.ready_timeout_s": (0.5, 3600.0),
    "supervisor.max_restarts": (0, 100),
    "supervisor.restart_backoff_s": (0.0, 60.0),
    "supervisor.shutdown_timeout_s": (0.1, 60.0),
    "protocol.max_message_bytes": (1024, 64 * 1024 * 1024),
    "protocol.max_text_chars": (1, 10_000_000),
    "ring.capacity_s": (1.0, 3600.0),
    "ring.max_fill_s": (0.5, 3600.0),
    "chunker.target_min_s": (0.5, 60.0),
    "chunker.target_max_s": (0.5, 60.0),
    "chunker.hard_min_s": (0.1, 60.0),
    "chunker.hard_max_s": (0.5, 120.0),
    "chunker.first_chunk_s": (0.1, 60.0),
    "chunker.first_chunk_max_s": (0.2, 60.0),
    "prebuffer.start_s": (0.0, 30.0),
    "prebuffer.resume_s": (0.0, 30.0),
    "prebuffer.low_water_s": (0.0, 30.0),
    "tts.noise_scale": (-1.0, 2.0),
    "tts.noise_w_scale": (-1.0, 2.0),
    "tts.parallel_streams": (-1, 3),
    "gpu.vram_limit_gb": (-1.0, 1024.0),
    "gpu.prebuffer_s": (-1.0, 30.0),
    "gpu.util_target_low": (-1.0, 100.0),
    "gpu.util_target_high": (-1.0, 100.0),
    "xtts.stream_chunk_tokens": (1, 400),
    "dsp.crossfade_ms": (0.0, 50.0),
    "dsp.silence_db": (-90.0, -20.0),
    "dsp.lead_ms": (0.0, 100.0),
    "dsp.pause_paragraph_ms": (0.0, 3000.0),
    "dsp.pause_sentence_ms": (0.0, 3000.0),
    "dsp.pause_clause_ms": (0.0, 3000.0),
    "dsp.pause_conjunction_ms": (0.0, 3000.0),
    "dsp.pause_word_ms": (0.0, 3000.0),
    "dsp.pause_end_ms": (0.0, 3000.0),
    "audio.blocksize": (64, 1024),
    "audio.fade_ms": (0.0, 10.0),
    "audio.tail_pad_ms": (0.0, 5000.0),
    "audio.device_rate": (0, 192000),
    "actors.prelude.max_words": (1, 60),
    "actors.prelude.max_tokens": (1, 32768),
    "actors.prelude.temperature": (0.0, 2.0),
    "actors.prelude.timeout_s": (0.5, 600.0),
    "actors.prelude.threads": (0, 256),
    "actors.narrative.max_words": (1, 60),
    "actors.narrative.max_tokens": (1, 32768),
    "actors.narrative.temperature": (0.0, 2.0),
    "actors.narrative.timeout_s": (0.5, 600.0),
    "actors.narrative.threads": (0, 256),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "tts.engine": ("piper", "xtts"),
    "xtts.device": ("cuda", "cpu"),
    "xtts.language": (
        "en",
        "es",
        "fr",
        "de",
        "it",
        "pt",
        "pl",
        "tr",
        "ru",
        "nl",
        "cs",
        "ar",
        "zh-cn",
        "hu",
        "ko",
        "ja",
        "hi",
    ),
    "tts.fallback_engine": ("", "piper"),
    "gpu.profile": ("auto", "high_performance", "balanced", "modest"),
    "actors.prelude.backend": ("text", "openai", "transformers"),
    "actors.narrative.backend": ("text", "openai", "transformers"),
}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load defaults, then the optional file, then ``SKALD_*`` variables, then ``overrides``."""
    origins: dict[str, str] = {}
    data = _read_toml(DEFAULT_FILE)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config error: --config {path}: no such file")
        for dotted, value in _flatten(_read_toml(path)).items():
            _set_dotted(data, dotted, value, str(path))
            origins[dotted] = str(path)
    for dotted, (raw, var) in _env_overrides(os.environ if env is None else env, data).items():
        _set_dotted(data, dotted, raw, var)
        origins[dotted] = var
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, "command line")
        origins[dotted] = "command line"
    return _validated(_build(Settings, data, "", origins), origins)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path}: not valid TOML: {exc}") from None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# Short names for the GPU knobs (docs/gpu.md); each stands for exactly one dotted key.
ENV_ALIASES: dict[str, str] = {
    "SKALD_PARALLEL_STREAMS": "tts.parallel_streams",
    "SKALD_VRAM_LIMIT_GB": "gpu.vram_limit_gb",
    "SKALD_PREBUFFER_S": "gpu.prebuffer_s",
}


def _env_overrides(env: Mapping[str, str], defaults: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Map ``SKALD_AUDIO_SINK`` -> ``audio.sink`` using the known keys (so ``_`` inside a key
    name, as in ``max_fill_s``, is unambiguous). Unknown ``SKALD_`` variables that look like
    settings are an error rather than silently ignored."""
    known = {dotted.replace(".", "_").upper(): dotted for dotted in _flatten(defaults)}
    found: dict[str, tuple[str, str]] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        alias = ENV_ALIASES.get(var)
        if alias is not None:
            long_var = ENV_PREFIX + alias.replace(".", "_").upper()
            if long_var in env:
                if env[long_var] != raw:
                    both = f"{var}={raw!r} and {long_var}={env[long_var]!r}"
                    raise ConfigError(f"config error: {both} both set {alias}; use one")
                continue  # the same value under both names: the long name is reported as the origin
            found[alias] = (raw, var)
            continue
        key = var[len(ENV_PREFIX) :]
        if key in known:
            found[known[key]] = (raw, var)
        elif key.split("_", 1)[0].lower() in defaults:
            close = ", ".join(ENV_PREFIX + k for k in sorted(known) if k.split("_")[0] == key.split("_")[0])
            raise ConfigError(f"config error: unknown setting {var}; known in that section: {close}")
    return found


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"config error: unknown setting {dotted!r} (from {source})")
        node = child
    if parts[-1] not in node or isinstance(node[parts[-1]], dict):
        known = ", ".join(sorted(k for k, v in node.items() if not isinstance(v, dict)))
        raise ConfigError(f"config error: unknown setting {dotted!r} (from {source}); known: {known}")
    node[parts[-1]] = value


def _coerce(dotted: str, value: Any, target: type, origin: str) -> Any:
    where = f" (from {origin})" if origin else ""
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if target is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if not math.isfinite(result):
                raise ValueError
            return result
        if target is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[target]
    raise ConfigError(f"config error: {dotted} = {value!r}{where}: must be {expected}")


def _build(cls: Any, data: Mapping[str, Any], prefix: str, origins: Mapping[str, str]) -> Any:
    kwargs: dict[str, Any] = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name, fld in hints.items():
        dotted = f"{prefix}{name}"
        if name not in data:
            continue
        value = data[name]
        ftype = fld.type if isinstance(fld.type, type) else _resolve(cls, name)
        if dataclasses.is_dataclass(ftype):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config error: [{dotted}] must be a table")
            kwargs[name] = _build(ftype, value, dotted + ".", origins)
        else:
            kwargs[name] = _coerce(dotted, value, ftype, origins.get(dotted, ""))
    return cls(**kwargs)


def _resolve(cls: Any, name: str) -> Any:
    import typing

    return typing.get_type_hints(cls)[name]


def _validated(settings: Settings, origins: Mapping[str, str]) -> Settings:
    flat = _flatten(settings.to_dict())

    def fail(dotted: str, why: str) -> None:
        origin = origins.get(dotted)
        where = f" (from {origin})" if origin else ""
        raise ConfigError(f"config error: {dotted} = {flat[dotted]!r}{where}: {why}")

    for dotted, (lo, hi) in _RANGES.items():
        if not lo <= flat[dotted] <= hi:
            fail(dotted, f"must be between {lo:g} and {hi:g}")
    for dotted, choices in _CHOICES.items():
        if flat[dotted] not in choices:
            fail(dotted, f"must be one of: {', '.join(choices)}")
    sink = settings.audio.sink
    if sink not in ("device", "null") and not (sink.startswith("wav:") and len(sink) > 4):
        fail("audio.sink", "must be device, null or wav:PATH")
    latency = settings.audio.latency
    if latency not in ("low", "high"):
        try:
            if not 0.001 <= float(latency) <= 2.0:
                raise ValueError
        except ValueError:
            fail("audio.latency", 'must be "low", "high" or seconds between 0.001 and 2')
    if settings.ring.max_fill_s > settings.ring.capacity_s:
        fail("ring.max_fill_s", f"must not exceed ring.capacity_s ({settings.ring.capacity_s:g})")
    c = settings.chunker
    if not c.hard_min_s <= c.target_min_s <= c.target_max_s <= c.hard_max_s:
        fail(
            "chunker.target_min_s",
            "chunk bounds must satisfy hard_min_s <= target_min_s <= target_max_s <= hard_max_s "
            f"(got {c.hard_min_s:g} <= {c.target_min_s:g} <= {c.target_max_s:g} <= {c.hard_max_s:g})",
        )
    if c.first_chunk_s > c.first_chunk_max_s:
        fail("chunker.first_chunk_s", f"must not exceed chunker.first_chunk_max_s ({c.first_chunk_max_s:g})")
    p = settings.prebuffer
    if p.low_water_s > 0 and p.low_water_s >= min(p.start_s, p.resume_s):
        fail("prebuffer.low_water_s", "must be below prebuffer.start_s and prebuffer.resume_s")
    if settings.supervisor.control_endpoint and "://" not in settings.supervisor.control_endpoint:
        fail("supervisor.control_endpoint", "must be a ZeroMQ endpoint such as ipc:///path or tcp://127.0.0.1:5555")
    return settings
