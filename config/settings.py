"""Configuration: ``config/default.toml`` < ``--config FILE`` < ``SKALD_*`` environment < CLI.

Settings are frozen dataclasses, one per TOML section. Each field's type says what it accepts:
``Annotated[int, _range(64, 1024)]`` (a number in a range) or ``Annotated[str, _one_of(...)]``
(one of a few words). Loading merges the layers into one TOML-shaped dict and converts it with
``msgspec.convert`` (lax mode: environment variables are strings, so ``"512"`` becomes ``512``
and ``"false"`` becomes ``False``), which checks every type, range and choice. When it fails,
the error names the key, the value, where the value came from and what is allowed, e.g.::

    config error: audio.blocksize = 5000 (from SKALD_AUDIO_BLOCKSIZE): must be between 64 and 1024

msgspec reports the failing field by its path (``$.audio.blocksize``); the message is then
written from that field's annotation (``_explain``), so it reads the same whether the value was
the wrong type, out of range or not one of the choices. Checks that involve several keys
(``ring.max_fill_s <= ring.capacity_s``, the chunk bounds, ...) follow in ``_validated``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

DEFAULT_FILE = Path(__file__).with_name("default.toml")
ENV_PREFIX = "SKALD_"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


#: ``audio.rate``'s range: the internal rates (``actors.audio.pcm.MIN_RATE``/``MAX_RATE``: the
#: joiner, chunker and pre-buffer figures assume 16-24 kHz; 44.1/48 kHz exist only at the edges).
MIN_RING_RATE, MAX_RING_RATE = 16000, 24000


def _range(lo: float, hi: float) -> Meta:
    """A numeric field's allowed range, inclusive."""
    return Meta(ge=lo, le=hi)


def _one_of(*choices: str) -> Meta:
    """A string field that must be one of ``choices`` (kept in ``extra`` for the error message)."""
    return Meta(pattern="^(?:" + "|".join(re.escape(c) for c in choices) + ")$", extra={"choices": choices})


_XTTS_LANGUAGES = (
    "en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi",
)  # fmt: skip
_TEXT_BACKENDS = ("text", "openai", "transformers")
#: ``log.level`` words, quietest last; ``logging_level`` maps them to the ``logging`` numbers.
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class SupervisorSettings:
    run_dir: str = ""
    ready_timeout_s: Annotated[float, _range(0.5, 3600.0)] = 60.0
    max_restarts: Annotated[int, _range(0, 100)] = 3
    restart_backoff_s: Annotated[float, _range(0.0, 60.0)] = 0.25
    shutdown_timeout_s: Annotated[float, _range(0.1, 60.0)] = 3.0
    control_endpoint: str = ""
    events_endpoint: str = ""
    curve_server_key: str = ""
    curve_clients_dir: str = ""
    curve_client_key: str = ""
    curve_server_public_key: str = ""
    metrics: str = ""  # HOST:PORT of the Prometheus /metrics endpoint; "" = not served over HTTP


@dataclass(frozen=True)
class ProtocolSettings:
    max_message_bytes: Annotated[int, _range(1024, 64 * 1024 * 1024)] = 1048576
    max_text_chars: Annotated[int, _range(1, 10_000_000)] = 100000


@dataclass(frozen=True)
class RingSettings:
    capacity_s: Annotated[float, _range(1.0, 3600.0)] = 60.0
    max_fill_s: Annotated[float, _range(0.5, 3600.0)] = 30.0


@dataclass(frozen=True)
class TtsSettings:
    engine: Annotated[str, _one_of("piper", "xtts")] = "piper"
    voice: str = "en_US-joe-medium"
    noise_scale: Annotated[float, _range(-1.0, 2.0)] = -1.0
    noise_w_scale: Annotated[float, _range(-1.0, 2.0)] = -1.0
    fallback_engine: Annotated[str, _one_of("", "piper")] = "piper"
    fallback_voice: str = "en_US-joe-medium"
    parallel_streams: Annotated[int, _range(-1, 3)] = -1
    piper_streaming: bool = False
    piper_cache_dir: str = ""
    piper_threads: Annotated[int, _range(-1, 64)] = -1
    piper_spinning: bool = True


@dataclass(frozen=True)
class XttsSettings:
    model_dir: str = ""
    stream_chunk_tokens: Annotated[int, _range(1, 400)] = 20
    device: Annotated[str, _one_of("cuda", "cpu")] = "cuda"
    language: Annotated[str, _one_of(*_XTTS_LANGUAGES)] = "en"


@dataclass(frozen=True)
class VoicesSettings:
    dir: str = ""


@dataclass(frozen=True)
class GpuSettings:
    # -1 = take the value from the detected (or profile-forced) tier; see actors/gpu.py, docs/gpu.md.
    profile: Annotated[str, _one_of("auto", "high_performance", "balanced", "modest")] = "auto"
    vram_limit_gb: Annotated[float, _range(-1.0, 1024.0)] = -1.0
    prebuffer_s: Annotated[float, _range(-1.0, 30.0)] = -1.0
    util_target_low: Annotated[float, _range(-1.0, 100.0)] = -1.0
    util_target_high: Annotated[float, _range(-1.0, 100.0)] = -1.0


@dataclass(frozen=True)
class DspSettings:
    crossfade_ms: Annotated[float, _range(0.0, 50.0)] = 30.0
    trim_silence: bool = True
    silence_db: Annotated[float, _range(-90.0, -20.0)] = -50.0
    lead_ms: Annotated[float, _range(0.0, 100.0)] = 10.0
    pause_paragraph_ms: Annotated[float, _range(0.0, 3000.0)] = 700.0
    pause_sentence_ms: Annotated[float, _range(0.0, 3000.0)] = 300.0
    pause_clause_ms: Annotated[float, _range(0.0, 3000.0)] = 250.0
    pause_conjunction_ms: Annotated[float, _range(0.0, 3000.0)] = 100.0
    pause_word_ms: Annotated[float, _range(0.0, 3000.0)] = 50.0
    pause_end_ms: Annotated[float, _range(0.0, 3000.0)] = 200.0
    dither: bool = False


@dataclass(frozen=True)
class ChunkerSettings:
    target_min_s: Annotated[float, _range(0.5, 60.0)] = 3.0
    target_max_s: Annotated[float, _range(0.5, 60.0)] = 7.0
    hard_min_s: Annotated[float, _range(0.1, 60.0)] = 2.4
    hard_max_s: Annotated[float, _range(0.5, 120.0)] = 8.0
    first_chunk_s: Annotated[float, _range(0.1, 60.0)] = 1.2
    first_chunk_max_s: Annotated[float, _range(0.2, 60.0)] = 2.5
    lexicon: str = ""  # TOML file of a campaign's words and how to say them (actors.text.normalize.Lexicon)


@dataclass(frozen=True)
class PrebufferSettings:
    start_s: Annotated[float, _range(0.0, 30.0)] = 0.5
    streaming_start_s: Annotated[float, _range(0.0, 30.0)] = 0.25
    resume_s: Annotated[float, _range(0.0, 30.0)] = 0.5
    low_water_s: Annotated[float, _range(0.0, 30.0)] = 0.0
    adaptive: bool = True
    adaptive_max_s: Annotated[float, _range(0.0, 30.0)] = 3.0
    adaptive_calm_s: Annotated[float, _range(1.0, 3600.0)] = 60.0


@dataclass(frozen=True)
class AudioSettings:
    sink: str = "device"
    wav_paced: bool = True
    device: str = ""
    hostapi: str = ""
    blocksize: Annotated[int, _range(64, 1024)] = 128
    latency: str = "low"
    fade_ms: Annotated[float, _range(0.0, 10.0)] = 4.0
    tail_pad_ms: Annotated[float, _range(0.0, 5000.0)] = 150.0
    rate: Annotated[int, _range(0, MAX_RING_RATE)] = 0
    device_rate: Annotated[int, _range(0, 192000)] = 0
    device_hold_s: Annotated[float, _range(0.0, 86400.0)] = 30.0
    device_stall_s: Annotated[float, _range(0.1, 60.0)] = 0.8


@dataclass(frozen=True)
class TextActorSettings:
    backend: Annotated[str, _one_of(*_TEXT_BACKENDS)] = "text"
    model: str = ""
    endpoint: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = ""
    device: str = "auto"
    max_words: Annotated[int, _range(1, 60)] = 12
    max_tokens: Annotated[int, _range(1, 32768)] = 400
    temperature: Annotated[float, _range(0.0, 2.0)] = 0.8
    system_prompt: str = ""
    timeout_s: Annotated[float, _range(0.5, 600.0)] = 30.0
    max_retries: Annotated[int, _range(0, 10)] = 2
    prefill: bool = True
    threads: Annotated[int, _range(0, 256)] = 0


@dataclass(frozen=True)
class LogSettings:
    level: Annotated[str, _one_of(*LOG_LEVELS)] = "warning"
    format: Annotated[str, _one_of("text", "json")] = "text"


@dataclass(frozen=True)
class ActorsSettings:
    prelude: TextActorSettings = field(default_factory=TextActorSettings)
    narrative: TextActorSettings = field(default_factory=TextActorSettings)


#: OpenAI's voice names; each maps to a skald voice (``web.voices.<name>``, "" = ``tts.voice``).
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip


@dataclass(frozen=True)
class WebVoiceSettings:
    """OpenAI voice name -> skald voice ("" = the default voice, ``tts.voice``)."""

    alloy: str = ""
    ash: str = ""
    ballad: str = ""
    cedar: str = ""
    coral: str = ""
    echo: str = ""
    fable: str = ""
    marin: str = ""
    nova: str = ""
    onyx: str = ""
    sage: str = ""
    shimmer: str = ""
    verse: str = ""


@dataclass(frozen=True)
class WebSettings:
    http: str = ""
    api_key: str = ""
    max_renders: Annotated[int, _range(1, 64)] = 4
    max_body_bytes: Annotated[int, _range(1024, 64 * 1024 * 1024)] = 1048576
    render_buffer_s: Annotated[float, _range(1.0, 3600.0)] = 60.0
    cors_origins: str = ""
    voices: WebVoiceSettings = field(default_factory=WebVoiceSettings)
    max_listeners: Annotated[int, _range(1, 256)] = 16
    ice_servers: str = ""
    listener_timeout_s: Annotated[float, _range(1.0, 600.0)] = 10.0


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
    web: WebSettings = field(default_factory=WebSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def stage_start_s(self) -> float:
        """Audio buffered before the stage starts playing: ``prebuffer.streaming_start_s`` when its
        engine streams within a chunk (Piper with ``tts.piper_streaming``: the calibrated decode
        schedule keeps each later window ahead of the speaker, so the start threshold only covers
        the first window), else ``prebuffer.start_s`` (a whole chunk arrives at once)."""
        streams = self.stage_start_key == "prebuffer.streaming_start_s"
        return self.prebuffer.streaming_start_s if streams else self.prebuffer.start_s

    @property
    def stage_start_key(self) -> str:
        """The dotted key ``stage_start_s`` reads (for messages and ``skald gpu``'s sources)."""
        streams = self.tts.engine == "piper" and self.tts.piper_streaming
        return "prebuffer.streaming_start_s" if streams else "prebuffer.start_s"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-shaped), for passing to child processes and for reports."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        """Rebuild from ``to_dict()`` output (already validated by the parent)."""
        return _convert(data, {})

    def replace(self, overrides: Mapping[str, Any], source: str = "command line") -> Settings:
        """Return a copy with dotted-key overrides (``{"audio.sink": "null"}``), validated."""
        data = self.to_dict()
        origins: dict[str, str] = {}
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value, source)
            origins[dotted] = source
        return _validated(_convert(data, origins), origins)


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
        _set_dotted(data, dotted, _env_bool_word(dotted, raw), var)
        origins[dotted] = var
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, "command line")
        origins[dotted] = "command line"
    return _validated(_convert(data, origins), origins)


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


#: msgspec reads "true"/"false"/"1"/"0" as booleans; environment variables also say yes/no, on/off.
_ENV_BOOL_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}


def _env_bool_word(dotted: str, raw: str) -> str:
    field_ = _FIELDS.get(dotted)
    if field_ is not None and field_[0] is bool:
        return _ENV_BOOL_WORDS.get(raw.strip().lower(), raw)
    return raw


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


# ---------------------------------------------------------------------------- conversion


def _leaf_fields(cls: Any, prefix: str = "") -> dict[str, tuple[type, Meta | None]]:
    """Every leaf setting by dotted key: (its plain type, its constraints)."""
    out: dict[str, tuple[type, Meta | None]] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        meta = None
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            meta = next((m for m in extras if isinstance(m, Meta)), None)
        if dataclasses.is_dataclass(hint):
            out.update(_leaf_fields(hint, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = (hint, meta)
    return out


_FIELDS = _leaf_fields(Settings)
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_AT_PATH = re.compile(r"at `\$((?:\.\w+)+)`")


def _convert(data: Mapping[str, Any], origins: Mapping[str, str]) -> Settings:
    """``data`` (TOML-shaped) as ``Settings``: msgspec checks every type, range and choice."""
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _explain(exc, data, origins) from None


def _explain(exc: msgspec.ValidationError, data: Mapping[str, Any], origins: Mapping[str, str]) -> ConfigError:
    """Rewrite msgspec's error (``Expected `int` <= 1024 - at `$.audio.blocksize```) as ours."""
    found = _AT_PATH.search(str(exc))
    if found is None:
        return ConfigError(f"config error: {exc}")
    dotted = found.group(1)[1:]
    if dotted not in _FIELDS:  # a section: [audio] = 3
        return ConfigError(f"config error: [{dotted}] must be a table")
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    origin = origins.get(dotted)
    where = f" (from {origin})" if origin else ""
    kind, meta = _FIELDS[dotted]
    try:
        value: Any = msgspec.convert(node, kind, strict=False)
    except msgspec.ValidationError:
        return ConfigError(f"config error: {dotted} = {node!r}{where}: must be {_EXPECTED.get(kind, kind.__name__)}")
    why = str(exc).split(" - at ", 1)[0]
    if meta is not None and meta.ge is not None and meta.le is not None and not meta.ge <= value <= meta.le:
        why = f"must be between {meta.ge:g} and {meta.le:g}"
    elif meta is not None and meta.extra and "choices" in meta.extra:
        why = f"must be one of: {', '.join(meta.extra['choices'])}"
    return ConfigError(f"config error: {dotted} = {value!r}{where}: {why}")


def is_loopback(host: str) -> bool:
    """``localhost`` and loopback addresses; anything else (0.0.0.0, a LAN address, a name) is not."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validated(settings: Settings, origins: Mapping[str, str]) -> Settings:
    """The checks that involve the meaning or several keys (types and ranges are already checked)."""
    flat = _flatten(settings.to_dict())

    def fail(dotted: str, why: str) -> None:
        origin = origins.get(dotted)
        where = f" (from {origin})" if origin else ""
        raise ConfigError(f"config error: {dotted} = {flat[dotted]!r}{where}: {why}")

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
    if 0 < settings.audio.rate < MIN_RING_RATE:
        fail("audio.rate", f"must be 0 (the voice's own rate) or {MIN_RING_RATE}-{MAX_RING_RATE} Hz")
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
    if p.low_water_s > 0 and p.low_water_s >= min(settings.stage_start_s, p.resume_s):
        fail("prebuffer.low_water_s", f"must be below {settings.stage_start_key} and prebuffer.resume_s")
    if settings.web.http:
        host, sep, port = settings.web.http.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            fail("web.http", "must be HOST:PORT, e.g. 127.0.0.1:8880 (port 0 = any free port)")
        if not is_loopback(host.strip("[]")) and not settings.web.api_key:
            fail(
                "web.http",
                "binds a non-loopback address, so every request must carry a key: set web.api_key "
                "(SKALD_WEB_API_KEY), or bind 127.0.0.1",
            )
    if settings.supervisor.metrics:
        try:
            metrics_address(settings.supervisor.metrics)
        except ValueError as exc:
            fail("supervisor.metrics", str(exc))
    for url in (u.strip() for u in settings.web.ice_servers.split(",")):
        if url and (url.partition(":")[0] not in ("stun", "turn", "turns") or not url.partition(":")[2]):
            fail("web.ice_servers", f"{url!r} is not a stun:HOST:PORT or turn[s]:USER:PASS@HOST:PORT URL")
    if settings.supervisor.control_endpoint and "://" not in settings.supervisor.control_endpoint:
        fail("supervisor.control_endpoint", "must be a ZeroMQ endpoint such as ipc:///path or tcp://127.0.0.1:5555")
    return settings


# ---------------------------------------------------------------------------- live settings

#: The keys a running server changes without a restart (``skald config set``, SIGHUP), and who
#: applies each: the audio consumer (pre-buffer thresholds, from the next start), the TTS worker
#: (joiner, chunker and default voice: from the next request; GPU control at once), every process
#: (log level) or the supervisor itself (read on each use). docs/configuration.md marks them; every
#: other key is read once at start-up (sockets, the ring, engines, the device stream) and
#: needs a restart.
LIVE_KEYS: frozenset[str] = frozenset(
    {
        "supervisor.ready_timeout_s",
        "supervisor.max_restarts",
        "supervisor.restart_backoff_s",
        "supervisor.shutdown_timeout_s",
        "protocol.max_message_bytes",
        "protocol.max_text_chars",
        "tts.voice",
        "gpu.profile",
        "gpu.vram_limit_gb",
        "gpu.prebuffer_s",
        "gpu.util_target_low",
        "gpu.util_target_high",
        "dsp.crossfade_ms",
        "dsp.trim_silence",
        "dsp.silence_db",
        "dsp.lead_ms",
        "dsp.pause_paragraph_ms",
        "dsp.pause_sentence_ms",
        "dsp.pause_clause_ms",
        "dsp.pause_conjunction_ms",
        "dsp.pause_word_ms",
        "dsp.pause_end_ms",
        "chunker.target_min_s",
        "chunker.target_max_s",
        "chunker.hard_min_s",
        "chunker.hard_max_s",
        "chunker.first_chunk_s",
        "chunker.first_chunk_max_s",
        "prebuffer.start_s",
        "prebuffer.streaming_start_s",
        "prebuffer.resume_s",
        "prebuffer.low_water_s",
        "prebuffer.adaptive",
        "prebuffer.adaptive_max_s",
        "prebuffer.adaptive_calm_s",
        "log.level",
    }
)


def logging_level(word: str) -> int:
    """``log.level`` as a ``logging`` level number (``"info"`` -> ``logging.INFO``)."""
    import logging

    return int(getattr(logging, word.upper()))


def setting_keys() -> list[str]:
    """Every leaf setting as a dotted key, in ``Settings`` order (``audio.blocksize``, ...)."""
    return list(_FIELDS)


def env_name(dotted: str) -> str:
    """The ``SKALD_*`` variable that sets ``dotted`` (``audio.blocksize`` -> ``SKALD_AUDIO_BLOCKSIZE``)."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def allowed(dotted: str) -> str:
    """What ``dotted`` accepts, in the words of the start-up errors (``between 64 and 1024``)."""
    kind, meta = _FIELDS[dotted]
    if meta is not None and meta.ge is not None and meta.le is not None:
        lo, hi = (f"{int(meta.ge)}", f"{int(meta.le)}") if kind is int else (f"{meta.ge:g}", f"{meta.le:g}")
        return f"{_EXPECTED[kind]} between {lo} and {hi}"
    if meta is not None and meta.extra and "choices" in meta.extra:
        return "one of: " + ", ".join(repr(c) if c == "" else c for c in meta.extra["choices"])
    return _EXPECTED.get(kind, kind.__name__)


def check_live_change(dotted: str) -> None:
    """``ConfigError`` unless ``dotted`` is a known key that a running server changes live."""
    if dotted not in _FIELDS:
        section = dotted.split(".", 1)[0]
        known = ", ".join(k for k in _FIELDS if k.split(".", 1)[0] == section) or ", ".join(
            sorted({k.split(".", 1)[0] for k in _FIELDS})
        )
        raise ConfigError(f"config error: unknown setting {dotted!r}; known: {known}")
    if dotted not in LIVE_KEYS:
        raise ConfigError(
            f"config error: {dotted} is read once at start-up: a restart is needed to change it "
            f"(set it in the --config file or {env_name(dotted)} and restart skald serve); "
            "`skald config get` marks the keys that change live"
        )


def flat_values(settings: Settings) -> dict[str, Any]:
    """Every setting by dotted key (``{"audio.blocksize": 128, ...}``)."""
    return _flatten(settings.to_dict())


def env_word(dotted: str, raw: str) -> str:
    """``raw`` as a ``SKALD_*`` variable's value is read for ``dotted`` (yes/no/on/off for booleans)."""
    return _env_bool_word(dotted, raw)
def metrics_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"``, ``":PORT"`` or ``"PORT"`` as ``(host, port)``; a bare port listens on
    loopback only (metrics are for the machine's own scraper unless a host is named)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError("must be HOST:PORT or PORT, with a port from 0 to 65535 (e.g. 127.0.0.1:9464)")
    return host, number
