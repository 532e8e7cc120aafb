"""Image embeddings for training, on disk: computed once per image, read back every epoch.

The store is the Predictor's EmbeddingCache with a directory, keyed here by the image encoder's
weights (not the checkpoint file, as the Predictor keys it) and the pixels: the encoder is frozen
during fine-tuning, so the embeddings stay valid for the base model, for every model tuned from
it, and for a later run on the same images. Only `max_items` embeddings are held in memory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..image_state import ImageState
from ..predictor import DISK_CACHE_BYTES, EmbeddingCache, Predictor

EMBEDDING_BYTES = 4_300_000  # one cached 256 x 64 x 64 float32 embedding file, with its header


def encoder_digest(model) -> str:
    """Identifies a model's image encoder weights and compute dtype (SHA-256 over the tensors)."""
    digest = hashlib.sha256()
    digest.update(f"{getattr(model, 'arch', type(model).__name__)}|{model.compute_dtype}".encode())
    for name, tensor in model.image_encoder.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EmbeddingStore:
    """Embeddings of images for one model's frozen encoder, in `directory`.

    expected_images: how many images a run will hold, so that the directory's size bound
    (EmbeddingCache's max_disk_bytes) keeps them all; at least the cache's default bound.
    image_bytes: the size of one image's cached state on disk (SAM 2's has high-res maps too).
    """

    def __init__(self, model, directory: str | os.PathLike, expected_images: int = 0, max_items: int = 2,
                 image_bytes: int = EMBEDDING_BYTES) -> None:
        self.model = model
        self.encoder_key = encoder_digest(model)
        self.cache = EmbeddingCache(
            max_items=max_items, directory=Path(directory),
            max_disk_bytes=max(DISK_CACHE_BYTES, int(expected_images * image_bytes * 1.25)),
        )
        self.predictor = Predictor(model, cache=self.cache)

    def key(self, image: np.ndarray) -> str:
        """Cache key of an HxWx3 uint8 image."""
        digest = hashlib.sha256()
        digest.update(self.encoder_key.encode())
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()[:40]

    def get(self, key: str) -> ImageState | None:
        return self.cache.get(key, self.model.device)

    def state(self, image: np.ndarray, key: str | None = None) -> ImageState:
        """The image's embedding state, from the store or computed (and stored)."""
        key = key or self.key(image)
        state = self.get(key)
        if state is None:
            state = self.predictor.compute_image_state(image)
            self.cache.put(key, state)
        return state

    @property
    def encoder_calls(self) -> int:
        return self.predictor.encoder_calls
