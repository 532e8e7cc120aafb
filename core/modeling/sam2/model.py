"""SAM 2 / 2.1 for images: the Hiera image encoder, SAM's prompt encoder and the SAM 2 mask decoder,
with SAM 2's pre- and post-processing.

The image path, step by step (plain, differentiable steps):

1. ``preprocess``: RGB 0-255 -> [0, 1] -> square bilinear resize (with antialias) to 1024x1024,
   the aspect ratio not kept -> ImageNet mean/std. The whole 1024x1024 frame is the image.
2. ``embed``: encoder levels at strides 4, 8, 16; ``conv_s0`` / ``conv_s1`` project the first two
   (once per image), ``no_mem_embed`` is added to the 64x64 embedding (the video model's "no
   memory" token, also added for single images).
3. ``transform_coords`` / ``transform_boxes``: pixel XY divided by the image's (w, h), times 1024.
4. ``decode_prompts``: boxes become corner points labelled 2 and 3 in front of the points; prompt
   encoder, then mask decoder -> low-res logits (B, M, 256, 256), IoU predictions, object score.
5. ``postprocess_masks``: low-res logits bilinearly upsampled straight to the image size (no crop:
   nothing was padded); ``clamp_low_res`` bounds the logits a caller keeps to +-32 (after the
   upsampling, as the official predictor does: clamping first would move some mask edges).

The predictor's family interface (see ``samkit.modeling.sam.Sam``) is answered with these steps:
``encode_image``, ``prepare_decoder``, ``to_input_frame``, ``decode``, ``mask_region``,
``upscale_logits`` and ``postprocess_masks``.

Checkpoints: the official ``{"model": state_dict}`` files of SAM 2.0 and 2.1. Their image keys
(``image_encoder.*``, ``sam_prompt_encoder.*``, ``sam_mask_decoder.*``, ``no_mem_embed``) load
strictly; the video model's memory weights are recognised and ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...build import load_weights
from ...fast.hiera import FastHiera
from ...fast.sam2_decoder import Sam2DecoderEngine
from ...image_state import ImageState
from ..backbones.sam2_encoder import Sam2ImageEncoder, build_sam2_image_encoder
from ..base import PromptableModel
from ..common import MLP
from ..transformer import TwoWayTransformer
from .checkpoint import IMAGE_KEY_PREFIXES, VIDEO_KEY_PREFIXES, image_weights  # noqa: F401 (their home before)
from .mask_decoder import Sam2MaskDecoder, Sam2MaskPrediction
from .prompt_encoder import BOX_CORNER_LABELS, Sam2PromptEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOW_RES_LOGIT_LIMIT = 32.0
SIZES = ("tiny", "small", "base_plus", "large")

class Sam2Input(NamedTuple):
    """A preprocessed image batch."""

    pixels: torch.Tensor  # (B, 3, 1024, 1024), normalised
    input_size: tuple[int, int]  # the part of the 1024 frame the image covers: all of it
    original_size: tuple[int, int]  # (H, W) of the image


class Sam2ImageEmbedding(NamedTuple):
    """What the decoder needs of an image: computed once, used for every prompt. (The field names
    are ImageState's, so the decoding steps take either.)"""

    features: torch.Tensor  # (B, 256, 64, 64), no_mem_embed added
    high_res_features: tuple[torch.Tensor, torch.Tensor]  # (B, 32, 256, 256), (B, 64, 128, 128), projected


class Sam2(PromptableModel):
    """A SAM 2 / 2.1 image model. ``arch`` names it (e.g. "sam2.1_hiera_tiny").

    Weights stay in float32; ``compute_dtype`` is the precision the image encoder runs in under
    autocast (the prompt encoder and mask decoder run in float32), and outputs are float32, as
    for SAM 1's ``Sam``.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    engine_type = Sam2DecoderEngine

    def __init__(
        self,
        image_encoder: Sam2ImageEncoder,
        prompt_encoder: Sam2PromptEncoder,
        mask_decoder: Sam2MaskDecoder,
        arch: str,
    ) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder, arch, IMAGENET_MEAN, IMAGENET_STD)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, prompt_encoder.embed_dim))

    # -- 1. image -> model input ---------------------------------------------------------------

    def preprocess(self, image: torch.Tensor) -> Sam2Input:
        """RGB image (3, H, W) or batch (B, 3, H, W) with values 0-255 (uint8 or float) -> the
        normalised 1024x1024 input. As the official transforms: divided by 255, resized (bilinear,
        antialias, on float32), then normalised."""
        x = image if image.dim() == 4 else image.unsqueeze(0)
        original_size = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.to(device=self.device, dtype=torch.float32).div(255)
        size = (self.image_size, self.image_size)
        if original_size != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return Sam2Input(x, size, original_size)

    # -- 2. model input -> image embedding ------------------------------------------------------

    def trunk_engine(self) -> FastHiera | None:
        """The fast Hiera engine (samkit.fast.hiera) over this model's trunk, made on first use and
        again whenever the image encoder or its trunk is replaced; None for any other encoder."""
        encoder = self.image_encoder
        if not isinstance(encoder, Sam2ImageEncoder):
            return None
        return self.kept_engine("_trunk_engine", (encoder.trunk,), lambda: FastHiera.for_trunk(encoder.trunk))

    def embed(self, pixels: torch.Tensor, reference: bool = False) -> Sam2ImageEmbedding:
        """Preprocessed (B, 3, 1024, 1024) -> the image's embedding and high-res features (float32).
        Runs under the caller's grad mode (wrap in ``torch.inference_mode()`` for inference). Where
        it applies (float32 inference on a CPU) the trunk is the fast engine, which computes the
        plain trunk's outputs to float32 rounding; ``reference=True`` runs the plain trunk."""
        with self.autocast():
            engine = None if reference else self.trunk_engine()
            if engine is not None and engine.runs(pixels):
                feat_s0, feat_s1, image_embed = self.image_encoder.neck_levels(engine(pixels))
            else:
                feat_s0, feat_s1, image_embed = self.image_encoder(pixels)
            feat_s0, feat_s1 = self.mask_decoder.project_high_res(feat_s0, feat_s1)
            image_embed = image_embed + self.no_mem_embed.view(1, -1, 1, 1)
        return Sam2ImageEmbedding(image_embed.float(), (feat_s0.float(), feat_s1.float()))

    # -- 3. prompts in pixels -> the 1024 frame -------------------------------------------------

    def transform_coords(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """XY pixel coordinates (..., 2) in the image -> the 1024x1024 input frame."""
        height, width = original_size
        size = torch.tensor([width, height], dtype=torch.float32, device=coords.device)
        # divided by the size, then multiplied, as the official transform does (the same rounding)
        return coords.float() / size * self.image_size

    def transform_boxes(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """XYXY boxes (..., 4) in the image -> the 1024x1024 input frame."""
        shape = boxes.shape
        return self.transform_coords(boxes.reshape(-1, 2, 2), original_size).reshape(shape)

    # -- 4. prompts -> masks ----------------------------------------------------------------------

    @staticmethod
    def prompt_points(
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Points (B, N, 2) + labels (B, N) and boxes (B, 4), in the 1024 frame, as the labelled
        points SAM 2 encodes: each box's corners first (labels 2, 3), then the points."""
        if boxes is None:
            return None if point_coords is None else (point_coords, point_labels)
        corners = boxes.reshape(-1, 2, 2)
        corner_labels = torch.tensor([BOX_CORNER_LABELS], dtype=torch.int32, device=boxes.device)
        corner_labels = corner_labels.expand(corners.shape[0], -1)
        if point_coords is None:
            return corners, corner_labels
        return (
            torch.cat([corners, point_coords.to(corners.dtype)], dim=1),
            torch.cat([corner_labels, point_labels.to(corner_labels.dtype)], dim=1),
        )

    def decode_prompts(
        self,
        state: Sam2ImageEmbedding | ImageState,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> Sam2MaskPrediction:
        """Prompts in the 1024 frame (points (B, N, 2) with labels (B, N), boxes (B, 4), mask logits
        (B, 1, 256, 256)) -> low-res logits, IoU predictions and object scores (float32, not clamped).
        The image's ``features`` and ``high_res_features`` come from ``embed`` or ``encode_image``;
        with batch 1 they are shared by all B prompts. Differentiable."""
        points = self.prompt_points(point_coords, point_labels, boxes)
        with self.decoder_autocast():
            sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_input)
            prediction = self.mask_decoder(
                image_embeddings=state.features,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                high_res_features=tuple(state.high_res_features),
                multimask_output=multimask_output,
            )
        return Sam2MaskPrediction(*(t.float() for t in prediction))

    # -- 5. low-res logits -> the image ---------------------------------------------------------

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits (B, M, 256, 256) -> logits at the image size (B, M, H, W): one bilinear
        resize (the image fills the whole input frame, so ``input_size`` is all of it)."""
        return F.interpolate(masks.float(), original_size, mode="bilinear", align_corners=False)

    @staticmethod
    def clamp_low_res(low_res_masks: torch.Tensor) -> torch.Tensor:
        """The low-res logits as the official predictor returns them (for a later mask input)."""
        return low_res_masks.clamp(-LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)

    # -- the predictor's family interface -------------------------------------------------------

    def encode_image(self, image: np.ndarray) -> ImageState:
        """HxWx3 uint8 RGB -> the image's state (embedding and high-res features, float32)."""
        # torch wants writable memory (a decoded PIL image's array is read-only): copied only then
        tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
        with torch.inference_mode():
            model_input = self.preprocess(tensor)
            embedding = self.embed(model_input.pixels)
        # normal tensors, not inference tensors: callers may use them where autograd records
        with torch.inference_mode(False):
            features = embedding.features.clone()
            high_res = tuple(t.clone() for t in embedding.high_res_features)
        return ImageState(features, model_input.original_size, model_input.input_size, high_res)

    def decoder_image_inputs(self, state: ImageState) -> tuple:
        return (tuple(state.high_res_features),)

    def to_input_frame(self, coords: np.ndarray, state: ImageState) -> np.ndarray:
        """XY pixel coordinates (..., 2) in the image -> the 1024 frame (float32, as the official)."""
        frame = self.transform_coords(torch.as_tensor(np.asarray(coords), dtype=torch.float32), state.original_size)
        return frame.numpy()

    def decode(
        self,
        state: ImageState | Sam2ImageEmbedding,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
        reference: bool = False,
        decoder_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode_prompts`` as the predictor calls it: float32 low-res logits (B, C, 256, 256),
        not clamped, and IoU predictions (B, C). best_only keeps the mask of highest predicted IoU
        (C = 1); region (rows, cols) of image tokens keeps the top-left (4 * rows, 4 * cols) of
        the logits. Runs the fast engine (samkit.fast.sam2_decoder), which computes only what is
        returned; reference: the plain modules (differentiable, no kept state) instead, with
        best_only and region picked from their full output. decoder_dtype: as Sam.decode."""
        engine = None if reference else self.decoder_engine()
        single_image = state.features.shape[0] == 1 and all(f.shape[0] == 1 for f in state.high_res_features)
        if engine is not None and single_image:
            points = self.prompt_points(point_coords, point_labels, boxes)
            with self.decoder_autocast():
                sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_input)
                masks, iou = engine.mask_decoder(
                    state.features, engine.dense_pe(), sparse, dense, tuple(state.high_res_features),
                    multimask_output, best_only=best_only, region=region, image_dtype=decoder_dtype,
                )
            return masks.float(), iou.float()
        prediction = self.decode_prompts(state, point_coords, point_labels, boxes, mask_input, multimask_output)
        masks, iou = prediction.masks, prediction.iou_predictions
        if best_only:
            best = iou.argmax(dim=1, keepdim=True)
            masks = torch.take_along_dim(masks, best[:, :, None, None], dim=1)
            iou = iou.gather(1, best)
        if region is not None:
            scale = masks.shape[-1] // self.prompt_encoder.image_embedding_size[1]
            masks = masks[..., : region[0] * scale, : region[1] * scale]
        return masks, iou

    def mask_region(self, state: ImageState) -> tuple[int, int]:
        """(rows, cols) of image tokens whose masks reach the image: all of them."""
        return tuple(self.prompt_encoder.image_embedding_size)

    def upscale_logits(self, low_res: np.ndarray, state: ImageState, out: np.ndarray | None = None) -> np.ndarray:
        """Low-res logits (256, 256) float32 on the CPU -> logits at the image size, into ``out``
        if given: ``postprocess_masks`` with OpenCV's bilinear resize (the same half-pixel
        centres as torch's, faster on a CPU; they differ by float32 rounding)."""
        height, width = state.original_size
        return cv2.resize(low_res, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)

    # -- weights --------------------------------------------------------------------------------

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor], path: Path | str = "state_dict") -> None:
        """Load an official SAM 2 / 2.1 state_dict (the ``"model"`` entry of the checkpoint)."""
        load_weights(self, image_weights(state_dict, path), Path(path))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def transformer_mlp(embedding_dim: int, mlp_dim: int, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """The MLP of SAM 2's two-way attention blocks: SAM 1's Linear -> ReLU -> Linear, under the
    keys of SAM 2's MLP class (``mlp.layers.0`` / ``mlp.layers.1``, where SAM 1 has ``mlp.lin1``
    / ``mlp.lin2``)."""
    if activation is not nn.ReLU:
        raise ValueError(f"SAM 2's transformer MLP uses ReLU, not {activation.__name__}")
    return MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)


def default_transformer() -> nn.Module:
    """SAM 2's two-way transformer: SAM 1's plain reference (depth 2, width 256, MLP 2048, 8 heads)
    with SAM 2's MLP key names."""
    return TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048, mlp=transformer_mlp)


def build_sam2(size: str, version: str = "2.1") -> Sam2:
    """A SAM 2 (``version="2.0"``) or 2.1 image model of one Hiera size, randomly initialised. The
    image networks of 2.0 and 2.1 are the same; the versions differ in video weights only."""
    if size not in SIZES:
        raise ValueError(f"unknown SAM 2 size {size!r}; expected one of {', '.join(SIZES)}")
    if version not in ("2.0", "2.1"):
        raise ValueError(f"unknown SAM 2 version {version!r}; expected '2.0' or '2.1'")
    prompt_encoder = Sam2PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    name = f"sam2.1_hiera_{size}" if version == "2.1" else f"sam2_hiera_{size}"
    return Sam2(build_sam2_image_encoder(size), prompt_encoder, Sam2MaskDecoder(default_transformer()), arch=name)
