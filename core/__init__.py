"""samkit: Segment Anything (SAM, MobileSAM) in pure PyTorch, with one API for prompts and segment-everything."""

from .build import CHECKPOINTS, build_sam, cache_dir, load_model
from .errors import CheckpointError, ImageError, PromptError, SamkitError
from .image_io import load_image
from .mask_generator import MaskGenerator
from .predictor import EmbeddingCache, Predictor
from .sam import Sam
from .ultralytics_api import SAM, Result

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINTS", "CheckpointError", "EmbeddingCache", "ImageError", "MaskGenerator", "Predictor", "PromptError", "Result", "SAM", "Sam",
    "SamkitError", "build_sam", "cache_dir", "load_image", "load_model",
]
