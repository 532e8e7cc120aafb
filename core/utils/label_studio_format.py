"""Label Studio's result format, written without Label Studio: brush RLE, polygon points in percent
of the image, region dicts and scores. Shared by the Label Studio adapter (its ML backend's
answers) and auto-annotation (a tasks-with-predictions JSON to import)."""

from __future__ import annotations

import secrets
import string

import numpy as np

from .mask_utils import score_of_predicted_iou

_ID_CHARS = string.ascii_letters + string.digits


def region_id() -> str:
    """A 10-character id like the ones Label Studio's editor makes."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(10))


# Label Studio's brush RLE (the bit format of label_studio_sdk.converter.brush.encode_rle): a
# 53-bit header (value count in 32 bits, word size - 1 in 5, the four run-length field widths - 1
# in 4 each), then per run of equal bytes a token: flag 1, the width's index in 2 bits, run
# length - 1 in that width, the byte in 8 bits; runs longer than 256 always take the 16-bit field,
# in pieces of at most 65536. (The format's flag-0 token for a run of one byte never occurs here:
# every pixel is 4 equal RGBA bytes.) Then 8 - (bits % 8) zero bits (a whole byte when already
# aligned), read as bytes.
BRUSH_WIDTHS = (3, 4, 8, 16)
BRUSH_HEADER_BITS = 32 + 5 + 4 * len(BRUSH_WIDTHS)
BRUSH_LONGEST = 1 << BRUSH_WIDTHS[-1]


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an HxW boolean mask: the mask as 0/255, repeated into RGBA,
    row-major. Byte for byte what label_studio_sdk's mask2rle returns (tests/label_studio), but
    computed on whole arrays: the SDK's encoder builds a string bit by bit per run and took 8 ms
    for one smooth 1800x1200 mask and 140 ms for a ragged one."""
    pixels = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    starts = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.append(starts, pixels.size)) * 4  # RGBA: every pixel is 4 equal bytes
    values = np.where(pixels[starts], 255, 0).astype(np.int64)
    return _brush_tokens_to_bytes(4 * pixels.size, lengths, values)


def _brush_tokens_to_bytes(count: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """The brush RLE bytes of `count` values given as runs (lengths >= 2, byte values)."""
    pieces = (lengths - 1) // BRUSH_LONGEST + 1  # a run over 65536 splits
    values_each = np.repeat(values, pieces)
    lengths_each = np.full(values_each.size, BRUSH_LONGEST)  # every piece but a run's last is full
    lengths_each[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * BRUSH_LONGEST
    long_run = np.repeat(lengths > 256, pieces)
    index = np.select([long_run, lengths_each <= 8, lengths_each <= 16], [3, 0, 1], default=2)
    width = np.asarray(BRUSH_WIDTHS)[index]
    nbits = 1 + 2 + width + 8
    codes = (1 << (nbits - 1)) | (index << (width + 8)) | ((lengths_each - 1) << 8) | values_each
    header = (count << 21) | ((8 - 1) << 16)
    for i, w in enumerate(BRUSH_WIDTHS):
        header |= (w - 1) << (12 - 4 * i)
    # The header, in two codes of at most 32 bits, then the tokens, one after another from the
    # most significant bit of 32-bit words; a code that crosses a word boundary is split.
    codes = np.concatenate(([header >> 32, header & 0xFFFFFFFF], codes))
    nbits = np.concatenate(([BRUSH_HEADER_BITS - 32, 32], nbits))
    ends = np.cumsum(nbits)
    starts = ends - nbits
    total_bits = int(ends[-1]) + 8 - int(ends[-1]) % 8  # the zero padding
    word = starts // 32
    free = 32 - starts % 32  # bits left in the first word
    overflow = np.maximum(nbits - free, 0)  # bits that go into the next word
    first = (codes >> overflow) << np.maximum(free - nbits, 0)
    second = (codes & ((1 << overflow) - 1)) << (32 - overflow)
    # the codes' bits never overlap, so summing them into the words is or-ing them (float64 sums
    # of integers below 2**32 are exact)
    num_words = -(-total_bits // 32)
    words = np.bincount(word, weights=first.astype(np.float64), minlength=num_words)
    spill = overflow > 0
    words += np.bincount(word[spill] + 1, weights=second[spill].astype(np.float64), minlength=num_words)[:num_words]
    return list(words.astype(">u4").tobytes()[: total_bits // 8])


def percent_points(ring: np.ndarray, width: int, height: int) -> list[list[float]]:
    """A pixel-centre outline ((K, 2) XY, as samkit.utils.outlines gives) -> Label Studio polygon points:
    [x, y] in percent of the image size, 4 decimals, the pixel centres moved to pixel corners'
    frame (+0.5) and clipped to [0, 100]."""
    pts = np.asarray(ring, dtype=np.float64) + 0.5
    pct = np.stack([pts[:, 0] / width * 100.0, pts[:, 1] / height * 100.0], axis=1).clip(0.0, 100.0)
    return [[round(float(x), 4), round(float(y), 4)] for x, y in pct]


def region(from_name: str, to_name: str, result_type: str, width: int, height: int, value: dict,
           score: float | None) -> dict:
    """One result region of a prediction: `value` under the control `from_name` (of type
    `result_type`, e.g. "brushlabels") on the object tag `to_name`, with an optional score."""
    out = {
        "id": region_id(),
        "from_name": from_name,
        "to_name": to_name,
        "type": result_type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
        "readonly": False,
    }
    if score is not None:
        out["score"] = unit_score(score)
    return out


def unit_score(score: float) -> float:
    """A Label Studio score (in [0, 1], 4 places) from SAM's predicted IoU."""
    return round(score_of_predicted_iou(score), 4)


def mean_score(scores) -> float:
    """A prediction's overall score: the mean of its regions' scores (0 without regions)."""
    return round(float(np.mean([unit_score(s) for s in scores])), 4) if len(scores) else 0.0
