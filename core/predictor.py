"""Promptable prediction on one image: set the image once, then decode any number of prompts."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .build import resolve_decoder_dtype
from .errors import PromptError
from .image_state import STATE_FORMAT, ImageState
from .utils.files import atomic_output
from .utils.image_io import ImageLike, load_image
from .utils.image_session import DecodeOutput, ImageSession
from .utils.memory import keep_freed_memory
from .utils.prompts import PromptBatch, check_prompts  # noqa: F401 (check_prompts: documented as samkit.predictor's)
from .modeling.sam import Sam

UPSCALE_CHUNK = 16  # prompts whose full-size logits are computed at once

# Default bound of an EmbeddingCache's directory: ~500 embeddings of 4 MB.
DISK_CACHE_BYTES = 2 * 1024**3
CACHE_FILE_NAME = re.compile(r"[0-9a-f]{40}\.pt")  # Predictor.image_key + .pt


class EmbeddingCache:
    """Image embeddings by image content, least recently used first out; optionally also on disk.

    In memory it keeps `max_items` embeddings (4 MB each in float32, whatever the image size).
    On disk (`directory`) it keeps at most `max_disk_bytes` of them: the files used least
    recently (by modification time, which a hit renews) are deleted first. Thread-safe. The key
    covers the pixels and the model, so two models never share entries.
    """

    def __init__(
        self, max_items: int = 8, directory: str | Path | None = None, max_disk_bytes: int = DISK_CACHE_BYTES
    ) -> None:
        if max_disk_bytes <= 0:
            raise ValueError(f"max_disk_bytes must be positive, got {max_disk_bytes}")
        self.max_items = max_items
        self.directory = Path(directory) if directory is not None else None
        self.max_disk_bytes = max_disk_bytes
        self._items: OrderedDict[str, ImageState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, device: torch.device) -> ImageState | None:
        with self._lock:
            state = self._items.get(key)
            if state is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return state
        if self.directory is not None:
            path = self.directory / f"{key}.pt"
            if path.is_file():
                try:
                    state = ImageState.from_file(torch.load(path, map_location=device, weights_only=True))
                except Exception:  # a damaged or outdated cache file is recomputed, never fatal
                    path.unlink(missing_ok=True)
                    state = None
                if state is not None:
                    try:
                        path.touch()  # recently used: the last to be evicted
                    except OSError:
                        pass
                    self.put(key, state, write_disk=False)
                    with self._lock:
                        self.hits += 1
                    return state
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, state: ImageState, write_disk: bool = True) -> None:
        with self._lock:
            self._items[key] = state
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        if write_disk and self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.directory / f"{key}.pt") as tmp:
                torch.save(state.to_file(), tmp)
            self._trim_disk()

    def _trim_disk(self) -> None:
        """Delete the least recently used embedding files until the directory's are within
        max_disk_bytes. Only this cache's own files (hex key + .pt) are considered."""
        files = []
        for entry in os.scandir(self.directory):
            if CACHE_FILE_NAME.fullmatch(entry.name) and entry.is_file():
                try:
                    info = entry.stat()
                except OSError:  # removed meanwhile by another process
                    continue
                files.append((info.st_mtime, info.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_disk_bytes:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def model_fingerprint(model: Sam) -> str:
    """Identifies a model's weights cheaply: architecture, checkpoint file and compute dtype, and
    what an image state holds (so that cache files of an older format are never looked up)."""
    checkpoint = getattr(model, "checkpoint_path", None)
    stat = ""
    if checkpoint and Path(checkpoint).is_file():
        info = Path(checkpoint).stat()
        stat = f"{info.st_size}:{int(info.st_mtime)}"
    return f"{model.arch}|{checkpoint}|{stat}|{model.compute_dtype}|state-format-{STATE_FORMAT}"


def _is_frozen(array: np.ndarray) -> bool:
    """Whether no one can change the array's values: it and every array it views are read-only
    and the memory at the bottom is an immutable bytes object."""
    obj = array
    while isinstance(obj, np.ndarray):
        if obj.flags.writeable:
            return False
        obj = obj.base
    return isinstance(obj, bytes)


class Predictor(ImageSession):
    """SAM's promptable predictor with the official semantics, plus batching and an embedding cache.

    `set_image` computes an image's embedding, or takes it from the cache when the same pixels
    were seen before; `predict` and `predict_batch` then only run the light decoder.

    decoder_dtype: the precision of the decoder's image-sized work. float32 (the default) gives
    the official results to float32 rounding. bfloat16 is the reduced-precision mode for
    interactive clicks (masks at IoU >= 0.98 against float32, tests/core/
    test_reduced_precision_decoder.py): about a quarter less time per click on a CPU with
    bfloat16 dot products. "auto" picks bfloat16 on such a CPU and float32 elsewhere
    (samkit.build.resolve_decoder_dtype).
    """

    def __init__(
        self,
        model: Sam,
        cache_size: int = 8,
        cache_dir: str | Path | None = None,
        cache: EmbeddingCache | None = None,
        decoder_dtype: str | torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.decoder_dtype = resolve_decoder_dtype(decoder_dtype, model.device)
        if model.device.type == "cpu":
            keep_freed_memory()  # else every prompt takes its temporaries back through page faults
        self.cache = cache if cache is not None else EmbeddingCache(cache_size, cache_dir)
        self.encoder_calls = 0
        self._fingerprint = model_fingerprint(model)
        self._state: ImageState | None = None
        self._frozen_image: tuple[np.ndarray, str] | None = None  # (array, its key), see set_image

    # -- image -------------------------------------------------------------------------------
    def image_key(self, image: np.ndarray) -> str:
        """Cache key of an HxWx3 uint8 image for this model."""
        # SHA-256 rather than BLAKE2: most x86 and ARM CPUs now have SHA extensions, which make
        # it the faster of the two (benchmarks/RESULTS.md, "Design measurements"), and an
        # interactive tool may set the same image before every click.
        digest = hashlib.sha256()
        digest.update(self._fingerprint.encode())
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()[:40]

    def set_image(self, image: ImageLike) -> None:
        """Make `image` (path, HxWx3 uint8 RGB array or PIL image) the one prompts refer to.

        The pixels are hashed to find a cached embedding, except when the very array of the
        previous call comes again and cannot have changed: read-only down to an immutable bytes
        buffer, as np.asarray of a decoded PIL image is (what an adapter re-sends per click)."""
        array = load_image(image)
        if self._frozen_image is not None and self._frozen_image[0] is array:
            key = self._frozen_image[1]
        else:
            key = self.image_key(array)
            self._frozen_image = (array, key) if _is_frozen(array) else None
        state = self.cache.get(key, self.model.device)
        if state is None:
            state = self.compute_image_state(array)
            self.cache.put(key, state)
        self.set_image_state(state)

    def compute_image_state(self, image: np.ndarray) -> ImageState:
        """Run the image encoder on an HxWx3 uint8 image (no cache)."""
        state = self.model.encode_image(image)
        self.encoder_calls += 1
        return state

    def set_image_state(self, state: ImageState | None) -> None:
        """Use an embedding computed elsewhere (for example by another predictor)."""
        # the same state again (an annotator's next click): its decoder work was prepared when it
        # was set, and decoding checks that the engine still holds it
        if state is not None and state is not self._state:
            self.model.prepare_decoder(state, self.decoder_dtype)
        self._state = state

    @property
    def image_state(self) -> ImageState:
        return self._require_state()

    # -- prompts (predict / predict_batch: ImageSession's) -------------------------------------
    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction on prompts already in the 1024-px input frame (the official
        `predict_torch`): coords (B, N, 2), labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256)."""
        low_res, scores = self.decode_low_res(point_coords, point_labels, boxes, mask_input, multimask_output)
        state = self._require_state()
        masks = self.model.postprocess_masks(low_res, state.input_size, state.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, scores, self.model.clamp_low_res(low_res)

    @torch.inference_mode()
    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder only: low-res logits (B, C, 256, 256) and scores (B, C),
        float32, for prompts in the 1024-px input frame. best_only: C = 1, the best-scoring.
        region (rows, cols) of image tokens, e.g. mask_region(): logits (B, C, 4 * rows, 4 * cols),
        the top-left part of the full grid."""
        state = self._require_state()
        if region is not None:
            grid = tuple(self.model.prompt_encoder.image_embedding_size)
            if len(region) != 2 or not all(1 <= int(n) <= size for n, size in zip(region, grid)):
                raise PromptError(
                    f"region must be (rows, cols) of image tokens within the {grid[0]}x{grid[1]} grid, "
                    f"got {tuple(region)}"
                )
            region = None if tuple(region) == grid else (int(region[0]), int(region[1]))
        return self.model.decode(
            state, point_coords, point_labels, boxes, mask_input, multimask_output, best_only, region,
            decoder_dtype=self.decoder_dtype,
        )

    def logits_at_image_size(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (B, h, w) for the current image, SAM's 256 x 256 grid or its top-left
        part covering the image (mask_region), -> float32 logits at the image size (B, H, W), on
        low_res's device. On a CPU with OpenCV (transforms.upscale_logits, faster than torch's
        interpolate; a pixel whose logit is within ~2e-5 of a threshold may land on the other
        side), elsewhere with torch as Sam.postprocess_masks."""
        state = self._require_state()
        if low_res.device.type != "cpu":
            return self.model.postprocess_masks(low_res[:, None], state.input_size, state.original_size)[:, 0]
        source = low_res.float().numpy()
        out = np.empty((source.shape[0], *state.original_size), dtype=np.float32)
        for i in range(source.shape[0]):
            self.model.upscale_logits(source[i], state, out=out[i])
        return torch.from_numpy(out)

    def mask_region(self) -> tuple[int, int]:
        """(rows, cols) of image tokens from the top left whose masks reach the current image:
        what postprocessing reads of the low-res logits (the rest covers the padding)."""
        return self.model.mask_region(self._require_state())

    def _decode(
        self, prompts: PromptBatch, output: DecodeOutput, state: ImageState
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Checked prompts in image pixels -> masks at the image size, scores and low-res logits
        (None unless output.return_low_res), as predict_batch returns them."""
        coords, labels, boxes, mask_input = prompts
        multimask_output, return_logits, best_only, return_low_res = output
        device = self.model.device
        coords_t = labels_t = boxes_t = mask_t = None
        if coords is not None:
            coords_t = torch.as_tensor(self.model.to_input_frame(coords, state), dtype=torch.float, device=device)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)
        if boxes is not None:
            frame_boxes = self.model.to_input_frame(np.reshape(boxes, (-1, 2, 2)), state).reshape(np.shape(boxes))
            boxes_t = torch.as_tensor(frame_boxes, dtype=torch.float, device=device)
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=device)[None]
            num_prompts = (
                coords_t.shape[0] if coords_t is not None else (boxes_t.shape[0] if boxes_t is not None else 1)
            )
            mask_t = mask_t.expand(num_prompts, -1, -1, -1)
        region = None if return_low_res else self.mask_region()
        low_res, scores = self.decode_low_res(coords_t, labels_t, boxes_t, mask_t, multimask_output, best_only, region)
        height, width = state.original_size
        masks = np.empty((*low_res.shape[:2], height, width), dtype=np.float32 if return_logits else bool)
        if device.type == "cpu":
            low_res_np = low_res.numpy()
            logits = None if return_logits else np.empty((height, width), dtype=np.float32)
            for index in np.ndindex(*low_res_np.shape[:2]):
                if return_logits:
                    self.model.upscale_logits(low_res_np[index], state, out=masks[index])
                else:
                    self.model.upscale_logits(low_res_np[index], state, out=logits)
                    np.greater(logits, self.model.mask_threshold, out=masks[index])
            # the returned low-res logits as the family's official predictor bounds them (SAM 2:
            # +-32), after the upscaling above, which used them unbounded as the official does
            return masks, scores.numpy(), self.model.clamp_low_res(low_res).numpy() if return_low_res else None
        # Upscale a few prompts at a time: full-size float logits of every prompt at once can take GBs.
        with torch.inference_mode():
            for start in range(0, low_res.shape[0], UPSCALE_CHUNK):
                logits = self.model.postprocess_masks(
                    low_res[start : start + UPSCALE_CHUNK], state.input_size, state.original_size
                )
                target = masks[start : start + UPSCALE_CHUNK]
                if return_logits:
                    target[...] = logits.cpu().numpy()
                else:
                    target[...] = (logits > self.model.mask_threshold).cpu().numpy()
        returned = self.model.clamp_low_res(low_res).cpu().numpy() if return_low_res else None
        return masks, scores.cpu().numpy(), returned
