"""The XTTS v2 model directory: what it must hold, its config, and the identity a voice profile
records (the weights' SHA-256), without importing torch or coqui.

A directory written by ``tests.support.xtts_random`` carries ``RANDOM_MARK`` in its config:
random weights, good for timing and code paths only, and every report says so.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from actors.tts.base import EngineError, file_sha256

log = logging.getLogger("skald.xtts")

MODEL_FILES = ("config.json", "model.pth", "vocab.json", "speakers_xtts.pth")
RANDOM_MARK = "skald_random_weights"
RANDOM_NOTE = "random weights: timing only"


def check_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """The model directory as a Path; ``EngineError`` naming the first missing path otherwise."""
    if not str(model_dir):
        raise EngineError(
            "XTTS needs a local model directory: set xtts.model_dir in your config file or "
            "SKALD_XTTS_MODEL_DIR to a directory holding " + ", ".join(MODEL_FILES) + " (skald never downloads it)"
        )
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise EngineError(
            f"XTTS model directory {path} does not exist: put the XTTS v2 files ({', '.join(MODEL_FILES)}) "
            "there, or point xtts.model_dir / SKALD_XTTS_MODEL_DIR at the directory that holds them"
        )
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise EngineError(
                f"XTTS model file {path / name} is missing: copy {name} of XTTS v2 into {path} "
                f"(a complete model directory holds {', '.join(MODEL_FILES)}); skald never downloads it"
            )
    return path


def read_model_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"XTTS config {model_dir / 'config.json'} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise EngineError(f"XTTS config {model_dir / 'config.json'} is not a JSON object")
    return data


def is_random_weights(model_dir: str | os.PathLike[str]) -> bool:
    """True for a directory written by ``tests.support.xtts_random`` (random weights: timing only)."""
    try:
        return bool(read_model_config(Path(model_dir)).get(RANDOM_MARK, False))
    except EngineError:
        return False


def model_identity(model_dir: str | os.PathLike[str], cache_file: Path | None = None) -> dict[str, Any]:
    """What a voice profile records about the model it was made with.

    ``model_sha256`` (the SHA-256 of ``model.pth``) is what must match: speaker conditioning is
    computed by the model's own encoders, so other weights make it meaningless. Hashing a
    1.8 GB checkpoint takes a couple of seconds, so the hash is cached in ``cache_file``,
    keyed by path, size and mtime; a copied model is hashed again once and still matches.
    """
    path = check_model_dir(model_dir).resolve()
    weights = path / "model.pth"
    stat = weights.stat()
    key = f"{weights}|{stat.st_size}|{stat.st_mtime_ns}"
    cache: dict[str, str] = {}
    if cache_file is not None:
        try:
            loaded = json.loads(cache_file.read_text(encoding="utf-8"))
            cache = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            cache = {}
    sha = cache.get(key)
    if not isinstance(sha, str):
        sha = file_sha256(weights)
        if cache_file is not None:
            cache[key] = sha
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
                tmp.write_text(json.dumps(cache, indent=1) + "\n", encoding="utf-8")
                os.replace(tmp, cache_file)
            except OSError as exc:  # a read-only store still works, it only hashes again next time
                log.debug("model checksum cache %s not written: %s", cache_file, exc)
    return {
        "dir": str(path),
        "model_sha256": sha,
        "model_bytes": stat.st_size,
        "config_sha256": file_sha256(path / "config.json"),
        "random_weights": is_random_weights(path),
    }
