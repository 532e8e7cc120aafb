"""samkit.Predictor's set_image / predict on exported ONNX files, without PyTorch.

Only numpy, Pillow, OpenCV and onnxruntime are used (nothing on this module's import path imports
torch), so a deployment can run an exported (fine-tuned) model with `pip install onnxruntime` and
samkit's light dependencies. Images are preprocessed as samkit does and masks are upscaled from the
decoder's low-res logits as samkit.Predictor does on a CPU, per family, so the outputs match
Predictor's on the same weights:

* SAM 1 family ("sam"): transforms.resize_longest_side (Pillow's bilinear resize of the longest
  side), the model.json normalisation and zero padding; masks by transforms.upscale_logits (crop).
* SAM 2 ("sam2"): the image divided by 255 and resized to the square input with Pillow's bilinear
  filter on float ("F") channels, which is torch's antialiased bilinear resize to float32
  rounding; ImageNet normalisation; masks resized straight to the image (OpenCV bilinear), and
  the single-mask choice (stability of the single-mask output, else the best multimask output) is
  made here from the decoder's all_masks, as Sam2MaskDecoder.select_stable_single_mask makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import SamkitError
from ..utils.image_io import ImageLike, load_image
from ..utils.image_session import DecodeOutput, ImageSession
from ..utils.prompts import PromptBatch
from ..utils.transforms import resize_longest_side, scale_boxes, scale_coords, upscale_logits
from .exporter import METADATA_FILE  # torch-free at import

FAMILIES = ("sam", "sam2")
# SAM 2's encoder outputs and its decoder's single-mask choice (export/sam2.py and
# modeling/sam2/mask_decoder.py, which import torch; the values are the official ones)
SAM2_ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embed")
SAM2_STABILITY_DELTA = 0.05
SAM2_STABILITY_THRESH = 0.98
SAM2_LOW_RES_LIMIT = 32.0  # the low-res logits SAM 2's predictor returns are bounded to +-32 (modeling/sam2)


@dataclass(frozen=True)
class OnnxImageState:
    """What the decoder needs of an image, as samkit's ImageState but in numpy: the embedding
    (1, 256, 64, 64) float32, the image's (H, W) and its (h, w) inside the model's input, and
    the finer feature maps of families whose decoder takes them (none for SAM 1)."""

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res_features: tuple[np.ndarray, ...] = ()


class OnnxPredictor(ImageSession):
    """Promptable prediction with a samkit ONNX export (a folder written by samkit.export).

    `set_image` runs the exported encoder (or takes the embedding from a small in-memory cache
    when the same pixels come again); `predict` runs the exported decoder. Same arguments and
    outputs as samkit.Predictor.predict / predict_batch. The folder must hold the decoder with all
    mask outputs (the default export, not --single-mask) and, for set_image, the encoder.

    quantized: use the int8 decoder (decoder.quant.onnx, from an export with quantize=True).
    providers / session_options: passed to onnxruntime.InferenceSession (default: the CPU).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        quantized: bool = False,
        providers: list[Any] | None = None,
        session_options: Any = None,
        cache_size: int = 8,
    ) -> None:
        self.model_dir = Path(model_dir).expanduser()
        self.metadata = read_metadata(self.model_dir)
        meta = self.metadata
        self.family = meta.get("family")
        if self.family not in FAMILIES:
            raise SamkitError(
                f"{self.model_dir}: OnnxPredictor runs SAM 1 family (vit_b/l/h, mobile_sam) and SAM 2 exports; "
                f"this folder holds a {self.family!r} model"
            )
        parts = meta.get("parts", {})
        decoder = parts.get("decoder")
        if decoder is None:
            raise SamkitError(f"{self.model_dir} holds no decoder; export it with parts including 'decoder'")
        if decoder.get("single_mask") and self.family == "sam":
            raise SamkitError(
                f"{self.model_dir}: the decoder was exported with single_mask, OnnxPredictor needs all mask "
                "outputs (export again without --single-mask)"
            )
        if not decoder.get("dynamic_points", True):
            raise SamkitError(
                f"{self.model_dir}: the decoder takes a fixed number of points; OnnxPredictor needs the default "
                "export with a dynamic point count"
            )
        decoder_file = decoder.get("quantized_file") if quantized else decoder.get("file")
        if decoder_file is None:
            raise SamkitError(f"{self.model_dir} holds no quantised decoder; export it with quantize=True (--quantize)")
        try:
            import onnxruntime
        except ImportError:
            raise SamkitError('OnnxPredictor needs onnxruntime: pip install "samkit[onnx]"') from None
        self._ort = onnxruntime
        self._providers = providers or ["CPUExecutionProvider"]
        self._session_options = session_options
        self.decoder = self._session(decoder_file)
        encoder = parts.get("encoder")
        self.encoder = self._session(encoder["file"]) if encoder is not None else None
        self.image_size = int(meta["input_size"])
        self.mask_threshold = float(meta.get("mask_threshold", 0.0))
        low_res = meta.get("low_res_size", [256, 256])
        self.mask_scale = self.image_size // int(low_res[1])
        self.low_res_size = (int(low_res[0]), int(low_res[1]))
        pre = meta["preprocessing"]
        self.pixel_mean = np.asarray(pre["pixel_mean"], dtype=np.float32)
        self.pixel_std = np.asarray(pre["pixel_std"], dtype=np.float32)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, OnnxImageState] = OrderedDict()
        self._state: OnnxImageState | None = None
        self.encoder_calls = 0

    def _session(self, name: str) -> Any:
        path = self.model_dir / name
        if not path.is_file():
            raise SamkitError(f"{path} is missing; the export folder is incomplete (export it again)")
        try:
            return self._ort.InferenceSession(str(path), self._session_options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise SamkitError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0]}") from None

    # -- image -------------------------------------------------------------------------------
    def image_key(self, image: np.ndarray) -> str:
        """Cache key of an HxWx3 uint8 image (its pixels and shape)."""
        digest = hashlib.sha256()
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()[:40]

    def set_image(self, image: ImageLike) -> None:
        """Make `image` (path, HxWx3 uint8 RGB array or PIL image) the one prompts refer to."""
        array = load_image(image)
        key = self.image_key(array)
        state = self._cache.get(key)
        if state is None:
            state = self.compute_image_state(array)
            self._cache[key] = state
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        self._state = state

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """HxWx3 uint8 -> the encoder's input (1, 3, S, S) float32 and the resized (h, w)."""
        if self.family == "sam2":
            return self._preprocess_square(image)
        resized = resize_longest_side(image, self.image_size)
        height, width = resized.shape[:2]
        size = self.image_size
        tensor = np.zeros((1, 3, size, size), dtype=np.float32)
        normalised = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        tensor[0, :, :height, :width] = normalised.transpose(2, 0, 1)
        return tensor, (height, width)

    def _preprocess_square(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """SAM 2: 0..1 values, resized to S x S (aspect ratio not kept), normalised."""
        size = self.image_size
        tensor = np.empty((1, 3, size, size), dtype=np.float32)
        for channel in range(3):
            values = image[..., channel].astype(np.float32) / np.float32(255)
            if values.shape != (size, size):
                values = np.asarray(Image.fromarray(values, mode="F").resize((size, size), Image.BILINEAR))
            tensor[0, channel] = (values - self.pixel_mean[channel]) / self.pixel_std[channel]
        return tensor, (size, size)

    def compute_image_state(self, image: np.ndarray) -> OnnxImageState:
        """Run the exported encoder on an HxWx3 uint8 image (no cache)."""
        if self.encoder is None:
            raise SamkitError(
                f"{self.model_dir} holds no encoder; export it with parts including 'encoder', or give an "
                "embedding with set_image_state"
            )
        tensor, input_size = self.preprocess(image)
        original_size = (image.shape[0], image.shape[1])
        if self.family == "sam2":
            high_res_0, high_res_1, features = self.encoder.run(list(SAM2_ENCODER_OUTPUTS), {"image": tensor})
            self.encoder_calls += 1
            return OnnxImageState(features, original_size, input_size, (high_res_0, high_res_1))
        (features,) = self.encoder.run(["image_embeddings"], {"image": tensor})
        self.encoder_calls += 1
        return OnnxImageState(features, original_size, input_size)

    def set_image_state(self, state: OnnxImageState | None) -> None:
        """Use an embedding computed elsewhere (another predictor, a server, the browser)."""
        self._state = state

    # -- prompts (predict / predict_batch: ImageSession's) -------------------------------------
    def decode_low_res(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The decoder alone, on one prompt already in the resized input frame: point_coords (N, 2),
        point_labels (N,), box (4,), mask_input (1, 256, 256) -> low-res logits (M, 256, 256) and
        scores (M,) of all M mask outputs (SAM's single-mask output first)."""
        state = self._require_state()
        if self.family == "sam2":
            return self._decode_low_res_sam2(state, point_coords, point_labels, box, mask_input)
        coords = [np.zeros((0, 2), dtype=np.float32)]
        labels = [np.zeros((0,), dtype=np.float32)]
        if point_coords is not None:
            coords.append(np.asarray(point_coords, dtype=np.float32).reshape(-1, 2))
            labels.append(np.asarray(point_labels, dtype=np.float32).reshape(-1))
        if box is not None:
            coords.append(np.asarray(box, dtype=np.float32).reshape(2, 2))
            labels.append(np.array([2, 3], dtype=np.float32))
        elif point_coords is not None:
            # without a box SAM's prompt encoder appends a padding point labelled -1
            coords.append(np.zeros((1, 2), dtype=np.float32))
            labels.append(np.array([-1], dtype=np.float32))
        has_mask = mask_input is not None
        feeds = {
            "image_embeddings": state.features,
            "point_coords": np.concatenate(coords)[None],
            "point_labels": np.concatenate(labels)[None],
            "mask_input": (
                np.asarray(mask_input, dtype=np.float32).reshape(1, 1, *self.low_res_size)
                if has_mask else np.zeros((1, 1, *self.low_res_size), dtype=np.float32)
            ),
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
            # The graph also upscales its masks to orig_im_size (for code written for the official
            # ONNX decoder); this predictor upscales the low-res logits itself, as samkit.Predictor
            # does (OpenCV, only the masks asked for), so it asks the graph for the smallest size.
            "orig_im_size": np.array([1.0, 1.0], dtype=np.float32),
        }
        scores, low_res = self.decoder.run(["iou_predictions", "low_res_masks"], feeds)
        return low_res[0], scores[0]

    def _decode_low_res_sam2(self, state, point_coords, point_labels, box, mask_input):
        """SAM 2's decoder: the box's corners (labels 2, 3) in front of the points, no padding point
        (the graph appends it); all four masks (all_masks, unclamped) and scores."""
        if len(state.high_res_features) != 2:
            raise SamkitError("this image state has no high-res features: it was not made by a SAM 2 encoder")
        coords = [np.zeros((0, 2), dtype=np.float32)]
        labels = [np.zeros((0,), dtype=np.float32)]
        if box is not None:
            coords.append(np.asarray(box, dtype=np.float32).reshape(2, 2))
            labels.append(np.array([2, 3], dtype=np.float32))
        if point_coords is not None:
            coords.append(np.asarray(point_coords, dtype=np.float32).reshape(-1, 2))
            labels.append(np.asarray(point_labels, dtype=np.float32).reshape(-1))
        has_mask = mask_input is not None
        feeds = {
            "image_embed": state.features,
            "high_res_feats_0": state.high_res_features[0],
            "high_res_feats_1": state.high_res_features[1],
            "point_coords": np.concatenate(coords)[None],
            "point_labels": np.concatenate(labels)[None],
            "mask_input": (
                np.asarray(mask_input, dtype=np.float32).reshape(1, 1, *self.low_res_size)
                if has_mask else np.zeros((1, 1, *self.low_res_size), dtype=np.float32)
            ),
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        }
        low_res, scores = self.decoder.run(["all_masks", "all_iou_predictions"], feeds)
        return low_res[0], scores[0]

    def _to_input_frame(self, coords, box, original_size):
        """Prompts in image pixels -> the model's input frame."""
        size = self.image_size
        if self.family == "sam2":
            # as Sam2.transform_coords: divided by (w, h), then times the size, in float32
            scale = np.array([original_size[1], original_size[0]], dtype=np.float32)
            frame_coords = None if coords is None else np.asarray(coords, dtype=np.float32) / scale * np.float32(size)
            frame_box = None if box is None else (
                (np.asarray(box, dtype=np.float32).reshape(2, 2) / scale * np.float32(size)).reshape(4)
            )
            return frame_coords, frame_box
        frame_coords = None if coords is None else scale_coords(coords, original_size, size)
        frame_box = None if box is None else scale_boxes(box, original_size, size)
        return frame_coords, frame_box

    def _single_mask(self, low_res: np.ndarray, scores: np.ndarray) -> slice:
        """Which of the M outputs is the single mask: SAM 1's single-mask token; SAM 2's if it is
        stable, else the multimask output of highest predicted IoU."""
        if self.family != "sam2":
            return slice(0, 1)
        flat = low_res[0].reshape(-1)
        outer = np.count_nonzero(flat > -SAM2_STABILITY_DELTA)
        # float32 division and threshold, as torch compares a float32 tensor with a Python float
        inner = np.float32(np.count_nonzero(flat > SAM2_STABILITY_DELTA))
        stability = inner / np.float32(outer) if outer else np.float32(1.0)
        if stability >= np.float32(SAM2_STABILITY_THRESH):
            return slice(0, 1)
        best = int(np.argmax(scores[1:])) + 1
        return slice(best, best + 1)

    def _upscale(self, low_res: np.ndarray, state: OnnxImageState, out: np.ndarray) -> None:
        if self.family == "sam2":  # the image fills the square input: one resize, no crop
            height, width = state.original_size
            cv2.resize(low_res, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
            return
        upscale_logits(low_res, state.input_size, state.original_size, self.mask_scale, out=out)

    def _decode(
        self, prompts: PromptBatch, output: DecodeOutput, state: OnnxImageState
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Checked prompts for B objects in image pixels -> masks (B, C, H, W), scores (B, C) and
        low-res logits (B, C, 256, 256) (None unless output.return_low_res), as Predictor._decode.
        The exported decoder takes one prompt per run, so the B prompts run one after the other."""
        coords, labels, boxes, mask_input = prompts
        # predict may come without points and box: one object, the decoder's padding point alone
        count = coords.shape[0] if coords is not None else (boxes.shape[0] if boxes is not None else 1)
        results = [
            self._decode_one(
                state,
                None if coords is None else coords[i],
                None if labels is None else labels[i],
                None if boxes is None else boxes[i],
                mask_input,
                output,
            )
            for i in range(count)
        ]
        if count == 1:  # predict's one object: views, no copy
            masks, scores, low_res = results[0]
            return masks[None], scores[None], None if low_res is None else low_res[None]
        masks = np.stack([r[0] for r in results])
        scores = np.stack([r[1] for r in results])
        low_res = np.stack([r[2] for r in results]) if output.return_low_res else None
        return masks, scores, low_res

    def _decode_one(self, state, coords, labels, box, mask_input, output: DecodeOutput):
        """One object's prompts in image pixels (coords (N, 2), labels (N,), box (4,), mask_input)
        -> masks (C, H, W), scores (C,), low-res logits (C, 256, 256) or None."""
        multimask_output, return_logits, best_only, return_low_res = output
        frame_coords, frame_box = self._to_input_frame(coords, box, state.original_size)
        low_res, scores = self.decode_low_res(frame_coords, labels, frame_box, mask_input)
        chosen = slice(1, None) if multimask_output else self._single_mask(low_res, scores)
        low_res, scores = low_res[chosen], scores[chosen]
        if best_only:
            best = int(np.argmax(scores))
            low_res, scores = low_res[best : best + 1], scores[best : best + 1]
        height, width = state.original_size
        masks = np.empty((len(scores), height, width), dtype=np.float32 if return_logits else bool)
        logits = None if return_logits else np.empty((height, width), dtype=np.float32)
        for i in range(len(scores)):
            target = masks[i] if return_logits else logits
            self._upscale(low_res[i], state, target)
            if not return_logits:
                np.greater(logits, self.mask_threshold, out=masks[i])
        if return_low_res and self.family == "sam2":
            # bounded after upscaling, as SAM2ImagePredictor (and samkit.Predictor) return them
            low_res = np.clip(low_res, -SAM2_LOW_RES_LIMIT, SAM2_LOW_RES_LIMIT)
        return masks, scores.astype(np.float32), (np.ascontiguousarray(low_res) if return_low_res else None)


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """The model.json of an export folder, or a SamkitError saying what is wrong."""
    if not model_dir.is_dir():
        raise SamkitError(f"{model_dir} is not a folder; give the folder samkit export wrote")
    path = model_dir / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise SamkitError(f"{model_dir} has no {METADATA_FILE}: it is not a samkit export folder") from None
    except (OSError, ValueError) as exc:
        raise SamkitError(f"cannot read {path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "onnx":
        raise SamkitError(f"{path} does not describe a samkit ONNX export")
    return meta
