"""Errors the backend answers with. Each carries the HTTP status it maps to and a message an
annotator (or whoever reads Label Studio's log) can act on."""

from __future__ import annotations

from samkit import SamkitError


class BackendError(SamkitError):
    status_code = 500


class BadRequestError(BackendError):
    """The request body is not what the protocol says (malformed JSON, wrong shapes)."""

    status_code = 400


class RequestTooLargeError(BackendError):
    status_code = 413


class LabelConfigError(BackendError):
    """The labeling config has nothing samkit can work with."""

    status_code = 422


class TaskError(BackendError):
    """A task cannot be segmented (no image in its data, no usable prompt)."""

    status_code = 422


class ImageFetchError(BackendError):
    """The task's image could not be downloaded or decoded."""

    status_code = 502


class LabelStudioUnreachable(ImageFetchError):
    """Label Studio's URL gets no answer at all (refused, unknown host, timed out)."""
