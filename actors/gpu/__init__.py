"""GPU room: ``detect`` (what GPU is there), ``tiers`` (its tier and the resolved values),
``sensors`` (NVML and ``torch.cuda`` readings), ``control`` (VRAM and utilization control, the one
OOM path) and ``hooks`` (what the TTS worker asks of it). See docs/gpu.md."""
