"""Streaming Piper's one-off jobs: calibration (``skald voice calibrate``) and the export of
the cached-state decoder (needs torch, the ``xtts`` extra; the graph then runs on onnxruntime).

Both run ``streaming_vits`` code on skald's cache (``actors.tts.piper_streaming_cache``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from actors.tts.base import EngineError
from actors.tts.piper import DEFAULT_VOICE
from actors.tts.piper_streaming import StreamingPiperEngine
from actors.tts.piper_streaming_cache import VoiceCache, builtin_profile, ensure_split, save_profile, validate_profile


def _zero_conditioning(params: dict[str, Any]) -> None:
    """Zero speaker-conditioning convs for a single-speaker voice (see ``export_cached_decoder``)."""
    if "dec.cond" in params:
        return  # multi-speaker: the real ones are there
    for name in [k for k in params if k.startswith("flow.flows.") and k.endswith(".enc.in_layers.0")]:
        prefix = name.removesuffix(".in_layers.0")
        layers = sum(1 for k in params if k.startswith(prefix + ".in_layers."))
        channels = params[name]["weight"].shape[0] * layers  # 2 * hidden per layer
        params[prefix + ".cond_layer"] = _zero_conv(channels)
    params["dec.cond"] = _zero_conv(params["dec.conv_pre"]["weight"].shape[0])


def _zero_conv(out_channels: int) -> dict[str, Any]:
    return {
        "weight": np.zeros((out_channels, 1, 1), dtype=np.float32),
        "bias": np.zeros(out_channels, dtype=np.float32),
        "dilation": 1,
        "stride": 1,
        "pads": [0, 0],
        "op": "Conv",
    }


def export_cached_decoder(cache: VoiceCache, hop: int) -> Path:
    """Build the cached-state decoder (``streaming_vits.export``'s steps, needs torch) into
    ``cache.cached_decoder``. The library's ``export_stream`` is not called because it splits
    the model again into its default cache, beside the model; the graph it writes is the same."""
    import onnx
    import torch
    from streaming_vits import _stream_decoder
    from streaming_vits._torch_decoder import Decoder, Generator, ResidualCouplingBlock, load_conv_params

    class _Decoder(Decoder):
        """The library's torch rebuild, also for single-speaker voices: their flow and HiFi-GAN
        have no speaker conditioning convs, which the rebuild requires; zero convs (weight and
        bias 0, one input channel) add exactly nothing, so they stand in for them."""

        def __init__(self, onnx_path: str) -> None:
            torch.nn.Module.__init__(self)
            params = load_conv_params(onnx_path)
            _zero_conditioning(params)
            self.flow = ResidualCouplingBlock(params)
            self.dec = Generator(params)
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)

    decoder = _stream_decoder.StreamDecoder(_Decoder(str(cache.model_path)), hop=hop)
    states = decoder.init_states()
    z = torch.randn(1, 192, 32)
    g = torch.randn(1, decoder.dec.cond.weight.shape[1], 1)

    class _Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sd = decoder

        def forward(self, z_p: Any, g: Any, pos: Any, n_frames: Any, *st: Any) -> Any:
            return self.sd(z_p, g, pos, n_frames, *st)

    names_in = ["z_p", "g", "pos", "n_frames"] + [f"s{i}" for i in range(len(states))]
    names_out = ["audio"] + [f"s{i}_out" for i in range(len(states))]
    cache.graphs.mkdir(parents=True, exist_ok=True)
    tmp = cache.cached_decoder.with_suffix(".tmp")
    pos, frames = torch.tensor(0, dtype=torch.int64), torch.tensor(128, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            _Wrapper().eval(),
            (z, g, pos, frames, *states),
            str(tmp),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={"z_p": {2: "frames"}, "audio": {2: "samples"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    for key, value in (
        ("streaming_vits.delay", decoder.delay),
        ("streaming_vits.hop", hop),
        ("streaming_vits.n_state", len(states)),
        ("streaming_vits.masked", 1),
        ("streaming_vits.z_channels", 192),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(tmp))
    tmp.replace(cache.cached_decoder)
    return cache.cached_decoder


#: Relative RMS error of the windowed decode at which the margin sweep stops. The library's own
#: 3e-4 gave margins L29/R24 here, whose windows differ from the full decode by up to 3.8e-4;
#: a tenth of it buys one more step of margin and keeps the stream within ``EXACT_TOLERANCE``.
MARGIN_TOLERANCE = 3e-5
#: Largest |streamed − full| a calibrated profile may give on the calibration text.
EXACT_TOLERANCE = 1e-4


def require_exact(error: float) -> float:
    """``error`` (max |streamed − full|) when within ``EXACT_TOLERANCE``, else an EngineError: a
    profile whose stream differs audibly from the full decode is never saved (NaN fails too)."""
    if not error <= EXACT_TOLERANCE:
        raise EngineError(
            f"calibrated decoder differs from the full decode by {error:.2e} (> {EXACT_TOLERANCE:g}); profile not saved"
        )
    return error


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def calibrate_voice(
    engine: StreamingPiperEngine,
    voice: str,
    safety: float = 2.0,
    verbose: bool = True,
    cached_decoder: bool | None = None,
) -> tuple[Any, Path, float]:
    """Calibrate ``voice`` on this machine with ``streaming_vits.calibrate`` (progress printed
    when ``verbose``) and save the profile in skald's cache; (profile, path, max |streamed − full|).

    ``cached_decoder``: None = export the cached-state decoder first when torch is installed and
    it is not there yet; True = export it (again); False = calibrate the windowed decoder (the
    engine must then have been built with ``use_cached_decoder=False``)."""
    from streaming_vits.calibrate import calibrate, verify

    voice = voice or DEFAULT_VOICE
    engine.load_voice(voice)
    cache = VoiceCache.for_model(engine.cache_dir, engine._model_path(voice))
    missing = not cache.cached_decoder.is_file()
    export = cached_decoder is True or (
        cached_decoder is None and engine.use_cached_decoder and torch_available() and missing
    )
    if export:
        if not torch_available():
            raise EngineError("the cached-state decoder export needs torch (pip install -e '.[xtts]')")
        if verbose:
            print(f"exporting the cached-state decoder to {cache.cached_decoder} (torch, one time)", flush=True)
        rate = engine.load_voice(voice).sample_rate
        export_cached_decoder(cache, ensure_split(cache, rate).hop)
    # A fresh stream from the built-in profile: margins are measured afresh, never inherited, and
    # the decoder just exported (or removed from use) is the one calibrated.
    stream = engine.open_stream(voice, profile=builtin_profile(engine._threads()))
    tts = stream.tts
    tts.profile.decoder = stream.decoder
    if verbose:
        print(f"decoder under calibration: {stream.decoder}", flush=True)
    profile = calibrate(tts, safety=safety, tolerance=MARGIN_TOLERANCE, verbose=verbose)
    validate_profile(profile)
    error = require_exact(float(verify(tts, verbose=verbose)))
    path = save_profile(stream.cache, profile)
    engine.streams[voice] = engine.open_stream(voice, profile=profile)
    engine.streams[voice].profile_origin = str(path)
    return profile, path, error
