"""The prompt encoder's part of the fast path: the dense positional encoding, kept.

The plain `PromptEncoder.get_dense_pe()` computes the encoding of the 64 x 64 grid on every call.
The fast decoder recognises its image-side work by the tensors it was computed from; handing it
the same kept tensor on every call lets it do so by memory and version counter instead of
comparing 1M values.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..modeling.prompt_encoder import PromptEncoder


class PESource(NamedTuple):
    """The frequency matrix the encoding was computed from: its memory, version counter (moved
    by every in-place update, load_state_dict included), device and dtype."""

    data_ptr: int
    version: int
    device: torch.device
    dtype: torch.dtype


class KeptPE(NamedTuple):
    """The kept encoding (1, C, H, W), what it was computed from, and its own version counter
    when it was made (if anyone writes into it, it is made again)."""

    source: PESource
    pe: torch.Tensor
    pe_version: int


class KeptDensePE:
    """prompt_encoder.get_dense_pe(), computed once and kept until the frequency matrix changes.
    Holds the plain module (no parameters of its own)."""

    def __init__(self, prompt_encoder: PromptEncoder) -> None:
        self.prompt_encoder = prompt_encoder
        self._kept: KeptPE | None = None

    def __getstate__(self) -> dict:
        return {"prompt_encoder": self.prompt_encoder, "_kept": None}

    def __call__(self) -> torch.Tensor:
        matrix = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        source = PESource(matrix.data_ptr(), matrix._version, matrix.device, matrix.dtype)
        kept = self._kept
        if kept is None or kept.source != source or kept.pe._version != kept.pe_version:
            # a normal tensor even when first asked for in inference mode: its version counter
            # lets the decoder recognise it without comparing values
            with torch.inference_mode(False):
                pe = self.prompt_encoder.get_dense_pe()
            kept = KeptPE(source, pe, pe._version)
            self._kept = kept
        return kept.pe
