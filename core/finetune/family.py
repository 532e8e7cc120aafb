"""What the trainer needs to know of a model family, behind one small interface.

The trainer (trainer.py) works on cached image embeddings, ground-truth masks on the decoder's
low-res grid, and prompts; everything that differs between families lives in a
`TrainingFamily`: how an image's pixels map to the prompt frame and to the low-res grid, how the
prompt encoder and mask decoder are called, and how low-res logits go back to the image. SAM 1
and MobileSAM share `SamFamily`; SAM 2 / 2.1 have `Sam2Family` (a square resize, a decoder that
also takes high-resolution features and returns an object-score logit, which the loss
supervises, and checkpoints whose decoder keys are `sam_mask_decoder.*`).

The modules are called with the official segment-anything signatures
(`PromptEncoder.forward(points, boxes, masks) -> sparse, dense`, `get_dense_pe()`,
`MaskDecoder.forward(image_embeddings, image_pe, sparse_prompt_embeddings,
dense_prompt_embeddings, multimask_output) -> masks, iou_pred`; SAM 2's decoder also takes
`high_res_features` and `repeat_image` and returns the object-score logits last), so a family can
wrap samkit's modules or the official ones (the gradient parity tests do both).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Callable, NamedTuple

import cv2
import numpy as np
import torch
from torch import nn

from ..image_state import ImageState
from ..utils.transforms import preprocess_shape, scale_boxes, scale_coords


class DecoderOutput(NamedTuple):
    """One decoder call on B prompts of one image."""

    low_res_logits: torch.Tensor  # (B, M, h, w)
    iou_predictions: torch.Tensor  # (B, M)
    object_score_logits: torch.Tensor | None = None  # (B, 1), families with an object-score token


class TrainingFamily(ABC):
    """A model family as the trainer sees it. `modules` maps "mask_decoder" / "prompt_encoder" to
    the module that holds those weights; `checkpoint_prefixes` maps the same names to their
    state_dict prefix in the official checkpoint (SAM 1: the same; SAM 2: "sam_mask_decoder", ...).
    `frozen` lists parameters (prefixed by the module name) that stay fixed even in a trained
    module: the image side that the cached embeddings already include.
    `iou_loss`: how the IoU head's error is measured ("mse": SAM paper; "l1": sam2 training)."""

    modules: dict[str, nn.Module]
    checkpoint_prefixes: dict[str, str] = {"mask_decoder": "mask_decoder", "prompt_encoder": "prompt_encoder"}
    frozen: tuple[str, ...] = ()
    iou_loss: str = "mse"
    embedding_bytes: int = 4_300_000  # one cached image state on disk, with its header

    def trainable(self, train_prompt_encoder: bool) -> dict[str, nn.Module]:
        """The modules to train: the mask decoder, and the prompt encoder when asked."""
        names = ["mask_decoder", "prompt_encoder"] if train_prompt_encoder else ["mask_decoder"]
        return {name: self.modules[name] for name in names}

    def trainable_parameters(self, train_prompt_encoder: bool) -> dict[str, nn.Parameter]:
        """"module.name" -> parameter, for every parameter the optimiser updates (`frozen` left out)."""
        return {
            f"{prefix}.{name}": param
            for prefix, module in self.trainable(train_prompt_encoder).items()
            for name, param in module.named_parameters()
            if not f"{prefix}.{name}".startswith(self.frozen)
        }

    def checkpoint_key(self, key: str) -> str:
        """A "module.name" key -> its key in the official checkpoint."""
        prefix, _, rest = key.partition(".")
        return f"{self.checkpoint_prefixes[prefix]}.{rest}"

    def official_checkpoint(self, model: nn.Module) -> dict:
        """What the official checkpoint of `model` holds (written when the base has no file)."""
        return model.state_dict()

    def _hold(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, image_size: int) -> None:
        """Keep the two trained modules (`modules`) and the frame facts every family derives alike."""
        self.modules = {"mask_decoder": mask_decoder, "prompt_encoder": prompt_encoder}
        self.image_size = image_size
        self._low_res = tuple(int(v) for v in prompt_encoder.mask_input_size)
        self._scale = image_size // self._low_res[1]

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.modules["prompt_encoder"]

    @property
    def mask_decoder(self) -> nn.Module:
        return self.modules["mask_decoder"]

    @property
    def low_res_size(self) -> tuple[int, int]:
        """(h, w) of the decoder's low-res logits."""
        return self._low_res

    @abstractmethod
    def low_res_target(self, mask: np.ndarray, state: ImageState) -> np.ndarray:
        """An HxW bool mask of the image -> the share of each low-res cell it covers, (h, w) float32."""

    @abstractmethod
    def valid_cells(self, state: ImageState) -> np.ndarray:
        """(h, w) bool: the low-res cells that show the image (not padding)."""

    @abstractmethod
    def prompt_points(self, xy: np.ndarray, state: ImageState) -> np.ndarray:
        """XY pixel coordinates (..., 2) of the image -> the prompt frame the prompt encoder takes."""

    @abstractmethod
    def prompt_boxes(self, boxes: np.ndarray, state: ImageState) -> np.ndarray:
        """XYXY pixel boxes (B, 4) -> the prompt frame."""

    @abstractmethod
    def prompt_extent(self, state: ImageState) -> tuple[float, float]:
        """(width, height) of the image in the prompt frame: where boxes are clipped."""

    @abstractmethod
    def cell_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Low-res cell indices -> the prompt-frame XY (..., 2) of their top-left corners; one
        cell spans `cell_size` prompt-frame pixels."""

    @property
    def cell_size(self) -> float:
        """Prompt-frame pixels per low-res cell."""
        return float(self._scale)

    @abstractmethod
    def decode(
        self,
        state: ImageState,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> DecoderOutput:
        """Prompt encoder + mask decoder on B prompts of one image, prompts in the prompt frame:
        coords (B, N, 2) with labels (B, N), boxes (B, 4), mask_input (B, 1, h, w) low-res logits."""

    @abstractmethod
    def logits_to_image(self, low_res: torch.Tensor, state: ImageState) -> torch.Tensor:
        """Low-res logits (B, h, w) -> logits at the image's size (B, H, W)."""


class SamFamily(TrainingFamily):
    """SAM 1 (ViT-B/L/H) and MobileSAM: the longest side resized to 1024 and padded to a square,
    prompts in that frame, low-res logits 256 x 256 (4 input pixels per cell)."""

    def __init__(
        self, prompt_encoder: nn.Module, mask_decoder: nn.Module, image_size: int = 1024,
        postprocess: Callable[[torch.Tensor, tuple[int, int], tuple[int, int]], torch.Tensor] | None = None,
    ) -> None:
        self._hold(prompt_encoder, mask_decoder, image_size)
        self._postprocess = postprocess

    @classmethod
    def for_model(cls, model: nn.Module) -> "SamFamily":
        """Trainable copies of a samkit Sam's prompt encoder and mask decoder (the model itself
        is left as it is: it embeds the images)."""
        prompt_encoder = copy.deepcopy(model.prompt_encoder)
        mask_decoder = copy.deepcopy(model.mask_decoder)
        # what the inference path keeps per image or weight version is not training state
        for module in (prompt_encoder, mask_decoder):
            for name in ("_prepared_cache", "_dense_pe_cache"):
                if hasattr(module, name):
                    setattr(module, name, None)
        return cls(prompt_encoder, mask_decoder, model.image_size, model.postprocess_masks)

    def _input_size(self, state: ImageState) -> tuple[int, int]:
        return preprocess_shape(*state.original_size, self.image_size)

    def low_res_target(self, mask: np.ndarray, state: ImageState) -> np.ndarray:
        # The mask is resized as the image is (longest side to 1024, area-averaged), padded like
        # the image, and averaged over each low-res cell: the share of the cell it covers.
        height, width = self._input_size(state)
        resized = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        padded = np.zeros((self.image_size, self.image_size), dtype=np.float32)
        padded[:height, :width] = resized
        rows, cols = self._low_res
        return padded.reshape(rows, self._scale, cols, self._scale).mean(axis=(1, 3))

    def valid_cells(self, state: ImageState) -> np.ndarray:
        height, width = self._input_size(state)
        rows, cols = self._low_res
        row_share = np.clip((height - self._scale * np.arange(rows)) / self._scale, 0, 1)
        col_share = np.clip((width - self._scale * np.arange(cols)) / self._scale, 0, 1)
        return (row_share[:, None] * col_share[None, :]) >= 0.5

    def prompt_points(self, xy: np.ndarray, state: ImageState) -> np.ndarray:
        return scale_coords(xy, state.original_size, self.image_size)

    def prompt_boxes(self, boxes: np.ndarray, state: ImageState) -> np.ndarray:
        return scale_boxes(boxes, state.original_size, self.image_size)

    def prompt_extent(self, state: ImageState) -> tuple[float, float]:
        height, width = self._input_size(state)
        return float(width), float(height)

    def cell_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(cols, np.float64), np.asarray(rows, np.float64)], axis=-1) * self._scale

    def decode(self, state, coords, labels, boxes, mask_input, multimask_output) -> DecoderOutput:
        points = (coords, labels) if coords is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = self.mask_decoder(
            image_embeddings=state.features,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        return DecoderOutput(low_res, iou)

    def logits_to_image(self, low_res: torch.Tensor, state: ImageState) -> torch.Tensor:
        input_size = self._input_size(state)
        if self._postprocess is not None:
            return self._postprocess(low_res[:, None], input_size, state.original_size)[:, 0]
        # SAM's postprocessing: to 1024 x 1024, crop the resized image, to the original size
        upscaled = torch.nn.functional.interpolate(
            low_res[:, None], (self.image_size, self.image_size), mode="bilinear", align_corners=False
        )[..., : input_size[0], : input_size[1]]
        return torch.nn.functional.interpolate(
            upscaled, state.original_size, mode="bilinear", align_corners=False
        )[:, 0]


class Sam2Family(TrainingFamily):
    """SAM 2 / 2.1 image models: the image stretched to a 1024 x 1024 square (aspect ratio not
    kept, nothing padded), prompts in that frame, low-res logits 256 x 256 (4 input pixels per
    cell), the decoder fed the image's high-resolution features.

    What differs from SAM 1 in training, and why:
    - `conv_s0` / `conv_s1` are mask decoder weights, but they project the encoder's features
      once per image (samkit.modeling.sam2's `Sam2.embed`): the cached high-res features already
      include them, so they stay frozen with the encoder (training them would need the encoder's
      raw maps per image, and the cache would no longer match the tuned model);
    - the object-score logit is supervised with binary cross-entropy towards "present", weight
      1, and the IoU head with L1 over every output, as sam2's `MultiStepMultiMasksAndIous` does
      in `sam2.1_hiera_b+_MOSE_finetune.yaml` (`loss_class` 1 with focal gamma 0 and no alpha,
      `iou_use_l1_loss`, `supervise_all_iou`);
    - masks are not replaced by "no object" where the object score is negative (sam2's video
      training does that in `_forward_sam_heads`): the image predictor, which a tuned image
      model serves, never does, so the masks are trained as they are used;
    - the loss is on the low-res logits (sam2 upsamples to 1024 first): the same targets and cost
      as SAM 1 here, one sixteenth of the pixels.
    - checkpoints are `{"model": state_dict}` with `sam_mask_decoder.*` / `sam_prompt_encoder.*`.
    """

    checkpoint_prefixes = {"mask_decoder": "sam_mask_decoder", "prompt_encoder": "sam_prompt_encoder"}
    frozen = ("mask_decoder.conv_s0.", "mask_decoder.conv_s1.")
    iou_loss = "l1"
    # the 64x64 embedding plus the (32, 256, 256) and (64, 128, 128) high-res maps, float32
    embedding_bytes = 4 * 256 * 64 * 64 + 4 * 32 * 256 * 256 + 4 * 64 * 128 * 128 + 20_000

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, image_size: int = 1024,
                 official: bool = False) -> None:
        """official: the modules are the sam2 package's (their decoder takes `repeat_image` and
        returns (masks, ious, sam tokens, object scores)); else samkit's."""
        self._hold(prompt_encoder, mask_decoder, image_size)
        self._official = official

    @classmethod
    def for_model(cls, model: nn.Module) -> "Sam2Family":
        """Trainable copies of a samkit Sam2's prompt encoder and mask decoder."""
        return cls(copy.deepcopy(model.prompt_encoder), copy.deepcopy(model.mask_decoder), model.image_size)

    def official_checkpoint(self, model: nn.Module) -> dict:
        """{"model": state_dict} under the official names (the video weights are not there)."""
        from ..modeling.sam2.checkpoint import OFFICIAL_KEY_PREFIXES as ours_to_official

        out = {}
        for key, value in model.state_dict().items():
            prefix = next(p for p in ours_to_official if key.startswith(p))
            out[ours_to_official[prefix] + key[len(prefix):]] = value
        return {"model": out}

    def low_res_target(self, mask: np.ndarray, state: ImageState) -> np.ndarray:
        # stretched to the square as the image is (area-averaged), then averaged over each cell
        size = self.image_size
        resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        rows, cols = self._low_res
        return resized.reshape(rows, self._scale, cols, self._scale).mean(axis=(1, 3))

    def valid_cells(self, state: ImageState) -> np.ndarray:
        return np.ones(self._low_res, dtype=bool)  # the image fills the whole square

    def _frame(self, state: ImageState) -> np.ndarray:
        height, width = state.original_size
        return np.array([width, height], dtype=np.float64)

    def prompt_points(self, xy: np.ndarray, state: ImageState) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) / self._frame(state) * self.image_size

    def prompt_boxes(self, boxes: np.ndarray, state: ImageState) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64)
        return self.prompt_points(boxes.reshape(-1, 2, 2), state).reshape(boxes.shape)

    def prompt_extent(self, state: ImageState) -> tuple[float, float]:
        return float(self.image_size), float(self.image_size)

    def cell_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(cols, np.float64), np.asarray(rows, np.float64)], axis=-1) * self._scale

    def decode(self, state, coords, labels, boxes, mask_input, multimask_output) -> DecoderOutput:
        from ..modeling.sam2.model import Sam2

        # boxes go in as their corners labelled 2 and 3, in front of the points (SAM 2's predictor)
        points = Sam2.prompt_points(coords, labels, boxes)
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_input)
        extra = {"repeat_image": sparse.shape[0] > 1} if self._official else {}
        out = self.mask_decoder(
            image_embeddings=state.features,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            high_res_features=list(state.high_res_features),
            **extra,
        )
        return DecoderOutput(out[0], out[1], out[-1])

    def logits_to_image(self, low_res: torch.Tensor, state: ImageState) -> torch.Tensor:
        # SAM 2's postprocessing: one bilinear resize straight to the image (nothing was padded)
        return torch.nn.functional.interpolate(
            low_res[:, None].float(), state.original_size, mode="bilinear", align_corners=False
        )[:, 0]


# The trainer's side of each model family of the registry (samkit.registry.Family.name -> make
# the family for a loaded model).
FAMILIES: dict[str, Callable[[nn.Module], TrainingFamily]] = {"sam": SamFamily.for_model, "sam2": Sam2Family.for_model}


def family_for(model: nn.Module) -> TrainingFamily:
    """The training family of a loaded samkit model, with trainable copies of its decoder parts."""
    from ..errors import SamkitError
    from ..registry import spec_of

    from ..modeling.sam2.model import Sam2

    try:
        name = spec_of(model).family.name
    except (KeyError, AttributeError):
        if isinstance(model, Sam2):  # built with build_sam2, or an arch the registry does not list
            return Sam2Family.for_model(model)
        raise SamkitError(f"fine-tuning needs a samkit model from the registry, got {type(model).__name__}") from None
    make = FAMILIES.get(name)
    if make is None:
        raise SamkitError(f"fine-tuning does not support the {name!r} model family yet")
    return make(model)
