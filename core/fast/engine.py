"""The fast decoding of a SAM 1 model, over its plain prompt encoder and mask decoder.

`Sam.decode` and `Sam.prepare_decoder` go through DecoderEngine.for_modules: it serves the plain
`PromptEncoder` and `MaskDecoder` of samkit.modeling (SAM 1's layout), and answers None for any
other modules (a stand-in, another family's decoder), which then run as they are.
"""

from __future__ import annotations

from torch import nn

from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder
from ..modeling.transformer import TwoWayTransformer
from .mask_decoder import FastMaskDecoder
from .prompt_encoder import KeptDensePE


class DecoderEngine:
    """The kept dense positional encoding (`dense_pe()`) and the FastMaskDecoder
    (`mask_decoder`) of one model's plain prompt encoder and mask decoder.

    A family's engine (fast/sam2_decoder.py) names its plain modules and its fast decoder in the
    three class attributes and inherits the rest."""

    prompt_encoder_type: type[nn.Module] = PromptEncoder
    mask_decoder_type: type[nn.Module] = MaskDecoder
    fast_decoder_type: type = FastMaskDecoder

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        self.dense_pe = KeptDensePE(prompt_encoder)
        self.mask_decoder = self.fast_decoder_type(mask_decoder)

    @classmethod
    def for_modules(cls, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> DecoderEngine | None:
        """An engine for these modules, or None when they are not the family's plain modules (the
        engine computes the upscaling with GELU activations)."""
        if not (
            isinstance(prompt_encoder, cls.prompt_encoder_type)
            and isinstance(mask_decoder, cls.mask_decoder_type)
            and isinstance(mask_decoder.transformer, TwoWayTransformer)
        ):
            return None
        activations = mask_decoder.output_upscaling[2], mask_decoder.output_upscaling[4]
        if not all(type(act) is nn.GELU and act.approximate == "none" for act in activations):
            return None
        return cls(prompt_encoder, mask_decoder)
