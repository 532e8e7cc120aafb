"""SAM 2 / 2.1 checkpoints for tests that need a SAM 2 file but not the official package: our own
Hiera model with seeded random weights, saved as the official files are (``{"model": state_dict}``
under the official key names, with video-model weights that loading must ignore).

The parity tests use tests/core/sam2_oracle.py instead (the official model's own weights)."""

from __future__ import annotations

from pathlib import Path

import torch

def official_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our Sam2's state_dict under the official checkpoint's key names."""
    out = {}
    for key, value in state_dict.items():
        # the official model calls its prompt encoder and mask decoder sam_prompt_encoder / sam_mask_decoder
        out["sam_" + key if key.startswith(("prompt_encoder.", "mask_decoder.")) else key] = value
    return out


def video_weights(version: str = "2.1", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A few of the video model's weights, as every official file carries them (2.1 has two more)."""
    make = {"device": device}
    weights = {
        "memory_attention.layers.0.norm1.weight": torch.ones(256, **make),
        "memory_encoder.out_proj.weight": torch.zeros(64, 256, 1, 1, **make),
        "maskmem_tpos_enc": torch.zeros(7, 1, 1, 64, **make),
        "no_mem_pos_enc": torch.zeros(1, 1, 256, **make),
        "no_obj_ptr": torch.zeros(1, 256, **make),
    }
    if version == "2.1":
        weights["no_obj_embed_spatial"] = torch.zeros(1, 64, **make)
        weights["obj_ptr_tpos_proj.weight"] = torch.zeros(64, 256, **make)
    return weights


def official_state_dict(model: torch.nn.Module, version: str = "2.1") -> dict[str, torch.Tensor]:
    """What an official file's "model" entry holds for this image model: its weights under the
    official names, plus video weights."""
    device = next(model.parameters()).device
    return {**official_names(model.state_dict()), **video_weights(version, device)}


def write_sam2_checkpoint(path: Path, size: str = "tiny", version: str = "2.1", seed: int = 0) -> Path:
    """A seeded random SAM ``version`` Hiera ``size`` saved at ``path`` in the official format. Every
    weight gets seeded noise on top of its initial value, so the model's outputs depend on its input
    (LayerNorms and the no-memory embedding start constant)."""
    from samkit.modeling.sam2.model import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(size, version)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": official_state_dict(model, version)}, path)
    return path
