"""The Sam model: image encoder + prompt encoder + mask decoder, with SAM's pre- and post-processing."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..fast.mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from ..utils.transforms import low_res_extent

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """A SAM-family model. `arch` names the image encoder ("vit_b", "vit_l", "vit_h", "mobile_sam").

    Weights stay in float32; `compute_dtype` (float32, bfloat16 or float16) is the precision the
    networks run in under autocast. Reduced precision stops at the networks: outputs are float32.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, arch: str
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.arch = arch
        self.compute_dtype = torch.float32
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

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
        """Context in which the networks run at `compute_dtype`; a no-op for float32."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resized uint8/float image (B, 3, h, w) -> normalised and zero-padded (B, 3, 1024, 1024)."""
        x = (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.image_size - width, 0, self.image_size - height))

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, 1024, 1024) -> float32 image embedding (B, 256, 64, 64)."""
        with torch.inference_mode(), self.autocast():
            features = self.image_encoder(x).float()
        # Returned as a normal tensor: its version counter lets the decoder recognise it on
        # every prompt without comparing values (inference tensors keep no counter).
        with torch.inference_mode(False):
            return features.clone()

    def prepare_decoder(self, image_embeddings: torch.Tensor) -> None:
        """Do the mask decoder's image-only work for prompts without a mask input now (it is
        kept for that image), so that the first prompt on an image is as fast as the next."""
        with torch.inference_mode(), self.autocast():
            _, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
            self.mask_decoder.prepare_image(image_embeddings, self.prompt_encoder.get_dense_pe(), dense)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits (B, M, 256, 256), or their top-left part covering the resized image
        (see MaskDecoder's region), -> logits at the original image size (B, M, H, W).

        The official steps: upscale to 1024 x 1024, crop the resized image's input_size, resize
        to original_size. Only the crop survives, so only the low-res rows and columns it reads
        are upscaled, at the same integer scale: bilinear interpolation computes each output
        pixel from its own position and the scale, so the kept pixels come out identical.
        """
        scale = self.mask_scale
        if scale * self.prompt_encoder.mask_input_size[1] == self.image_size:
            rows, cols = low_res_extent(input_size, scale, masks.shape[-2:])
            masks = F.interpolate(
                masks[..., :rows, :cols], (rows * scale, cols * scale), mode="bilinear", align_corners=False
            )
        else:
            masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    def num_parameters(self, include_unused_head: bool = False) -> int:
        """Parameter count; MobileSAM's unused classifier head is excluded unless asked for."""
        total = 0
        for name, param in self.named_parameters():
            if not include_unused_head and (
                name.startswith("image_encoder.head.") or name.startswith("image_encoder.norm_head.")
            ):
                continue
            total += param.numel()
        return total
