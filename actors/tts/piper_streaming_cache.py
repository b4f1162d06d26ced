"""Streaming Piper's files in skald's cache directory: split graphs and calibration profiles.

Layout (``tts.piper_cache_dir``; default ``$XDG_CACHE_HOME/skald/piper-streaming``)::

    <cache>/<voice>-<sha256 of the .onnx, 16 hex>/
        graphs/<voice>.frontend.onnx, .decoder.onnx, .split.json   split once, renamed into place
        graphs/<voice>.stream.onnx                                  the cached-state decoder, if exported
        profile-<machine key>.json                                  margins + schedule for one machine

A profile records the model hash and the machine (CPU, cores, architecture, onnxruntime) it
was measured on; one that does not match is ignored with a log line. Nothing is ever written
next to the model (``streaming_vits``' own default, ``.streaming-vits/`` beside it, would be
inside site-packages for the bundled voice): every library call here gets an explicit path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.tts.base import EngineError, file_sha256

log = logging.getLogger("skald.tts.piper_streaming")

#: Margins and schedule used until ``skald voice calibrate`` has run on this machine: margins the
#: library's conservative defaults, the schedule a ramp from 16 frames (186 ms of audio at
#: 22.05 kHz) to 256.
BUILTIN_SCHEDULE = (16, 32, 64, 128, 256)
BUILTIN_LEFT, BUILTIN_RIGHT = 48, 40
PROFILE_FORMAT = 1


def default_cache_dir(configured: str = "") -> Path:
    """``tts.piper_cache_dir`` if set, else ``$XDG_CACHE_HOME/skald/piper-streaming`` (``~/.cache``)."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skald" / "piper-streaming"


def machine_identity() -> dict[str, Any]:
    """What makes a decode schedule valid: the CPU, its core count, the architecture, onnxruntime."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = ""
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "arch": platform.machine(), "onnxruntime": ort_version}


def machine_key(identity: dict[str, Any] | None = None) -> str:
    identity = identity or machine_identity()
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


_SHA_MEMO: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def model_sha256(path: Path) -> str:
    """The model file's SHA-256, memoized by (path, size, mtime) for the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key not in _SHA_MEMO:
            _SHA_MEMO[key] = file_sha256(path)
        return _SHA_MEMO[key]


@dataclass
class VoiceCache:
    """Where one model's streaming files live (keyed by its content hash)."""

    root: Path
    model_path: Path
    sha256: str

    @classmethod
    def for_model(cls, cache_dir: Path, model_path: Path) -> VoiceCache:
        sha = model_sha256(model_path)
        stem = model_path.name.removesuffix(".onnx")
        return cls(cache_dir / f"{stem}-{sha[:16]}", model_path, sha)

    @property
    def graphs(self) -> Path:
        return self.root / "graphs"

    @property
    def cached_decoder(self) -> Path:
        return self.graphs / (self.model_path.name.removesuffix(".onnx") + ".stream.onnx")

    def profile_path(self, machine: str | None = None) -> Path:
        return self.root / f"profile-{machine or machine_key()}.json"


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a library function that prints progress; its output goes to the log instead."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return fn(*args, **kwargs)
        finally:
            for line in out.getvalue().splitlines():
                if line.strip():
                    log.info("streaming-vits: %s", line.strip())


def ensure_split(cache: VoiceCache, sample_rate: int) -> Any:
    """The split graphs of ``cache.model_path`` (``streaming_vits.graph.SplitModel``), made once.

    The split is written into a temporary directory beside ``graphs/`` and renamed into place,
    so a concurrent process finds either no split or a whole one."""
    from streaming_vits import graph

    meta_path = cache.graphs / (cache.model_path.name.removesuffix(".onnx") + ".split.json")
    if meta_path.is_file():
        meta, _ = _quiet(graph.ensure_split, cache.model_path, sample_rate=sample_rate, cache=cache.graphs)
        return meta
    cache.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=cache.root))
    try:
        _quiet(graph.split, cache.model_path, tmp, sample_rate=sample_rate, verbose=False)
        try:
            tmp.rename(cache.graphs)
        except OSError:
            if not meta_path.is_file():  # not a concurrent split that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta, _ = _quiet(graph.ensure_split, cache.model_path, sample_rate=sample_rate, cache=cache.graphs)
    return meta


def builtin_profile(threads: int) -> Any:
    from streaming_vits import Profile

    return Profile(left=BUILTIN_LEFT, right=BUILTIN_RIGHT, schedule=list(BUILTIN_SCHEDULE), threads=threads)


def validate_profile(profile: Any) -> None:
    """``EngineError`` when a profile's numbers cannot drive a decode (a broken file)."""
    schedule = profile.schedule
    if not isinstance(schedule, list) or not schedule or not all(isinstance(n, int) and n > 0 for n in schedule):
        raise EngineError(f"profile schedule must be a list of positive frame counts, got {schedule!r}")
    for name in ("left", "right", "threads"):
        value = getattr(profile, name)
        if not isinstance(value, int) or value < 0 or (name == "threads" and value < 1):
            raise EngineError(f"profile {name} must be a non-negative integer, got {value!r}")


def load_profile(cache: VoiceCache, decoder: str, threads: int) -> tuple[Any, str]:
    """(profile, where it came from). No file, or a file for another machine, model or decoder:
    the built-in profile, with a log line. An unreadable or invalid file: ``EngineError``."""
    from streaming_vits import Profile

    path = cache.profile_path()
    if not path.is_file():
        log.info(
            "no streaming profile for %s on this machine (%s): built-in schedule; `skald voice calibrate` makes one",
            cache.model_path.name,
            path,
        )
        return builtin_profile(threads), "built-in"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if (
            not isinstance(data, dict)
            or data.get("format") != PROFILE_FORMAT
            or not isinstance(data.get("profile"), dict)
        ):
            raise ValueError(f"not a skald streaming profile (format {PROFILE_FORMAT})")
        known = set(Profile.__dataclass_fields__)
        profile = Profile(**{k: v for k, v in data["profile"].items() if k in known})
    except (OSError, ValueError, TypeError) as exc:
        raise EngineError(f"streaming profile {path} is unreadable: {exc}") from None
    validate_profile(profile)
    if data.get("model_sha256") != cache.sha256 or data.get("machine") != machine_identity():
        log.warning("streaming profile %s is for another model or machine: ignored, built-in schedule", path)
        return builtin_profile(threads), "built-in (profile of another machine or model ignored)"
    if profile.decoder != decoder:
        log.warning(
            "streaming profile %s was calibrated for the %s decoder, not %s: ignored", path, profile.decoder, decoder
        )
        return builtin_profile(threads), f"built-in (profile for the {profile.decoder} decoder ignored)"
    return profile, str(path)


def save_profile(cache: VoiceCache, profile: Any) -> Path:
    """Write ``profile`` with the model hash and machine it is valid for (atomically)."""
    from dataclasses import asdict

    path = cache.profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": PROFILE_FORMAT,
        "model": cache.model_path.name,
        "model_sha256": cache.sha256,
        "machine": machine_identity(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": asdict(profile),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
