"""What every model family's image model shares: its three networks, its name, the precision it
computes in, and the pixel statistics it normalises with. `Sam` (SAM 1, MobileSAM) and `Sam2`
build on it and add their own pre- and post-processing (the family interface, see Sam)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class PromptableModel(nn.Module):
    """image_encoder + prompt_encoder + mask_decoder, named `arch` (a registry name).

    pixel_mean / pixel_std (3 values each, in the family's pixel scale) are buffers that move with
    the model and are not saved (official checkpoints do not hold them). Weights stay in float32;
    `compute_dtype` is the precision the image encoder runs in under `autocast()`; the prompt
    encoder and mask decoder run in float32 (`decoder_autocast()`)."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module, arch: str,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.arch = arch
        self.compute_dtype = torch.float32
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def mask_scale(self) -> int:
        """Input-frame pixels per low-res mask pixel (1024 / 256 = 4)."""
        return self.image_size // self.prompt_encoder.mask_input_size[1]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context in which the image encoder runs at `compute_dtype`; a no-op for float32."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def decoder_autocast(self) -> contextlib.AbstractContextManager:
        """Context for the prompt encoder and the mask decoder: float32 whatever `compute_dtype`
        is. Reduced precision pays in the image encoder, nearly all of an image's work; in the
        decoder it saves little (the fast engine's factored products are float32 only) and it
        cost most of the masks' disagreement with float32 (benchmarks/RESULTS.md, "Design
        measurements", `decoder_autocast`). A caller's own autocast around the call
        (fine-tuning) still applies."""
        return contextlib.nullcontext()

    # -- the fast decoder engine (core/fast): each family names its engine type and what of an
    # ImageState its decoder reads beside the embedding
    engine_type: type | None = None

    def kept_engine(self, slot: str, modules: tuple[nn.Module, ...], make: Callable[[], Any]) -> Any:
        """The fast engine kept under `slot` for these very modules: made by `make` on first use
        and again whenever one of them is replaced. A None from `make` (modules the engine does
        not serve) is kept too. A plain attribute, not a submodule: engines own no weights."""
        kept = self.__dict__.get(slot)
        if kept is None or len(kept[0]) != len(modules) or any(a is not b for a, b in zip(kept[0], modules)):
            kept = (modules, make())
            self.__dict__[slot] = kept
        return kept[1]

    def decoder_engine(self):
        """The fast engine (`engine_type`) over this model's prompt encoder and mask decoder, made
        on first use and again whenever either module is replaced; None when they are not the
        family's plain modules (a test's stand-in, say): decode then runs them as they are."""
        return self.kept_engine("_decoder_engine", (self.prompt_encoder, self.mask_decoder),
                                lambda: self.engine_type.for_modules(self.prompt_encoder, self.mask_decoder))

    def decoder_image_inputs(self, state) -> tuple:
        """What the mask decoder reads of an ImageState beside its embedding (SAM 2: the high-res
        features), as extra arguments of the engine's prepare_image."""
        return ()

    def prepare_decoder(self, state, decoder_dtype: torch.dtype = torch.float32) -> None:
        """Do the mask decoder's image-only work for prompts without a mask input now (the fast
        engine keeps it for that image), so that the first prompt on an image is as fast as the
        next; decoder_dtype as the later `decode` calls will pass it."""
        engine = self.decoder_engine()
        if engine is None:
            return
        with torch.inference_mode(), self.decoder_autocast():
            _, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
            extra = self.decoder_image_inputs(state)
            engine.mask_decoder.prepare_image(
                state.features, engine.dense_pe(), dense, *extra, image_dtype=decoder_dtype
            )
