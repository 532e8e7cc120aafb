"""The Sam model: image encoder + prompt encoder + mask decoder, with SAM's pre- and post-processing."""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..fast.engine import DecoderEngine
from ..fast.vit import FastViT
from ..image_state import ImageState
from ..utils.transforms import low_res_extent, resize_longest_side, scale_coords, upscale_logits
from .base import PromptableModel
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(PromptableModel):
    """A SAM 1 model. `arch` names the image encoder ("vit_b", "vit_l", "vit_h", "mobile_sam").

    What the predictor asks of every model family (SAM 2's model answers the same calls):
    encode_image (an image to its ImageState), prepare_decoder, to_input_frame (prompt pixels to
    the model's input frame), decode (prompts to low-res logits and IoU predictions), mask_region,
    upscale_logits / postprocess_masks (low-res logits back to the image), mask_threshold,
    image_size, device, dtype and autocast.

    Weights stay in float32; `compute_dtype` (float32, bfloat16 or float16) is the precision the
    image encoder runs in under autocast; the prompt encoder and mask decoder run in float32.
    Reduced precision stops at the encoder: its outputs are float32.

    The model holds the plain networks only (samkit.modeling: what training, export and the
    state_dict see). decode runs the prompt encoder and mask decoder through the fast inference
    engine (samkit.fast, `decoder_engine()`), which reads the same weights; decode(...,
    reference=True) runs the plain modules instead.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    engine_type = DecoderEngine

    def __init__(
        self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, arch: str
    ) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder, arch, PIXEL_MEAN, PIXEL_STD)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resized uint8/float image (B, 3, h, w) -> normalised and zero-padded (B, 3, 1024, 1024)."""
        x = (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.image_size - width, 0, self.image_size - height))

    # -- the family interface ------------------------------------------------------------------
    def encode_image(self, image: np.ndarray) -> ImageState:
        """HxWx3 uint8 RGB -> the image's state: SAM's preprocessing (the longest side resized to
        image_size with Pillow's bilinear, normalised, zero-padded) and the image encoder."""
        resized = resize_longest_side(image, self.image_size)
        tensor = torch.from_numpy(np.array(resized)).to(self.device).permute(2, 0, 1).contiguous()[None]
        features = self.embed_image(self.preprocess(tensor))
        return ImageState(features, (image.shape[0], image.shape[1]), (resized.shape[0], resized.shape[1]))

    def to_input_frame(self, coords: np.ndarray, state: ImageState) -> np.ndarray:
        """XY pixel coordinates (..., 2) in the original image -> the model's input frame (scaled
        with the image, as SAM's ResizeLongestSide does)."""
        return scale_coords(coords, state.original_size, self.image_size)

    def decode(
        self,
        state: ImageState,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
        reference: bool = False,
        decoder_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the input frame -> float32 low-res logits (B, C, 256, 256) and IoU
        predictions (B, C). point_coords (B, N, 2) with point_labels (B, N), boxes (B, 4) XYXY,
        mask_input (B, 1, 256, 256). C is 3 with multimask_output, else 1; best_only keeps the
        best-scoring one (C = 1). region (rows, cols) of image tokens: only their masks,
        (B, C, 4 * rows, 4 * cols), the top-left part of the full grid.

        reference: run the plain prompt encoder and mask decoder (differentiable, no kept state)
        instead of the fast engine, and pick best_only and region from their full output.
        decoder_dtype: bfloat16 runs the fast engine's image-sized work in bfloat16, the
        reduced-precision click mode (samkit.fast.mask_decoder.image_side_dtype)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        engine = None if reference else self.decoder_engine()
        with self.decoder_autocast():
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            if engine is None:
                low_res, scores = self.mask_decoder(
                    image_embeddings=state.features,
                    image_pe=self.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask_output,
                )
                low_res, scores = select_masks(low_res, scores, best_only, region, state.features.shape[-2:])
            else:
                low_res, scores = engine.mask_decoder(
                    image_embeddings=state.features,
                    image_pe=engine.dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask_output,
                    best_only=best_only,
                    region=region,
                    image_dtype=decoder_dtype,
                )
        return low_res.float(), scores.float()

    def mask_region(self, state: ImageState) -> tuple[int, int]:
        """(rows, cols) of image tokens from the top left whose masks reach the image: what
        postprocessing reads of the low-res logits (the rest covers the padding)."""
        grid_h, grid_w = self.prompt_encoder.image_embedding_size
        low_h, low_w = self.prompt_encoder.mask_input_size
        rows, cols = low_res_extent(state.input_size, self.mask_scale, (low_h, low_w))
        return -(-rows * grid_h // low_h), -(-cols * grid_w // low_w)

    def upscale_logits(self, low_res: np.ndarray, state: ImageState, out: np.ndarray | None = None) -> np.ndarray:
        """Low-res logits (h, w) float32 on the CPU (the full grid or its mask_region part) ->
        logits at the image size, into `out` if given: SAM's steps with OpenCV
        (transforms.upscale_logits)."""
        return upscale_logits(low_res, state.input_size, state.original_size, self.mask_scale, out=out)

    # -- steps --------------------------------------------------------------------------------
    def encoder_engine(self) -> FastViT | None:
        """The fast ViT engine (samkit.fast.vit) over this model's image encoder, made on first use
        and again whenever the encoder is replaced; None for other encoders (MobileSAM's TinyViT,
        a stand-in), which run as they are."""
        encoder = self.image_encoder
        return self.kept_engine("_encoder_engine", (encoder,), lambda: FastViT.for_encoder(encoder))

    def embed_image(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """Preprocessed (B, 3, 1024, 1024) -> float32 image embedding (B, 256, 64, 64). A ViT
        encoder runs through the fast engine where it applies (float32 or bfloat16 inference on
        a CPU), which computes the plain encoder's embedding to float32 rounding;
        ``reference=True`` runs the plain encoder."""
        with torch.inference_mode(), self.autocast():
            engine = None if reference else self.encoder_engine()
            encoder = engine if engine is not None and engine.runs(x) else self.image_encoder
            features = encoder(x).float()
        # Returned as a normal tensor: its version counter lets the decoder recognise it on
        # every prompt without comparing values (inference tensors keep no counter).
        with torch.inference_mode(False):
            return features.clone()

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

    @staticmethod
    def clamp_low_res(low_res_masks: torch.Tensor) -> torch.Tensor:
        """The low-res logits as the official predictor returns them: SAM 1's are not bounded."""
        return low_res_masks

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


def select_masks(
    masks: torch.Tensor,
    scores: torch.Tensor,
    best_only: bool,
    region: tuple[int, int] | None,
    grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """decode's best_only and region applied to a decoder's full output: masks (B, C, h, w) and
    scores (B, C) -> with best_only the best-scoring mask per prompt (C = 1); with region (rows,
    cols) of the (H, W) token grid, the masks' top-left part those tokens cover."""
    if best_only:
        best = scores.argmax(dim=1, keepdim=True)
        scores = scores.gather(1, best)
        masks = masks[torch.arange(masks.shape[0], device=masks.device)[:, None], best]
    if region is not None:
        rows = region[0] * masks.shape[-2] // grid[0]
        cols = region[1] * masks.shape[-1] // grid[1]
        masks = masks[..., :rows, :cols]
    return masks, scores
