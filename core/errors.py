"""Errors samkit raises on bad input. Each message says what was wrong and how to fix it."""

from __future__ import annotations


class SamkitError(Exception):
    """Base class of every error samkit raises on purpose."""


class ImageError(SamkitError, ValueError):
    """An image could not be read or has an unusable shape or type."""


class CheckpointError(SamkitError):
    """A checkpoint is missing, corrupt, of the wrong model, or cannot be downloaded."""


class PromptError(SamkitError, ValueError):
    """Point, box or mask prompts are malformed or do not fit the image."""


class OutputError(SamkitError, OSError):
    """An output file or directory cannot be written where the user asked (missing folder,
    a file where a directory belongs, no permission)."""


class DatasetError(SamkitError, ValueError):
    """A training dataset is malformed: the message names the file, image or object at fault."""
