"""What the fast image encoders (fast/hiera.py, fast/vit.py) share: linear layers as single oneDNN
products with their bias, GELU and residual sum fused in, in float32 or from kept bfloat16
weight copies, and the rule for when an engine computes an input.

On a CPU most of a transformer block's time outside the products is memory traffic: every
`nn.Linear` first copies its broadcast bias into the output, and GELU and each residual sum read
and write the whole activation again. The fused products remove those passes and keep the
arithmetic (float32 results to rounding).

Under a bfloat16 autocast the engines compute the products, the attention and the patch
embedding in bfloat16 as autocast does, but keep the residual stream in float32 (autocast's turns
bfloat16 wherever a bfloat16 product meets a bfloat16 shortcut), which is closer to float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def fused_linear_available() -> bool:
    """Whether this torch has oneDNN and its fused linear products."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype) -> torch.Tensor:
    """The norm in float32 (as autocast runs it), handed on in the products' precision."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(dtype)


class KeptWeights(NamedTuple):
    """A layer's weight (for a linear layer in oneDNN's layout) and bias in bfloat16, and the
    float32 parameters' memory and version counters they were converted from."""

    sources: tuple[tuple[int, int], ...]
    weight: torch.Tensor
    bias: torch.Tensor | None


def sources(*params: torch.Tensor | None) -> tuple[tuple[int, int], ...]:
    """Memory and version counter of each parameter (moved by every in-place update,
    load_state_dict included): what kept values computed from them are checked against."""
    return tuple(
        (0, 0) if p is None else (p.data_ptr(), -1 if p.is_inference() else p._version) for p in params
    )


def engine_precision(x: torch.Tensor, weights_dtype: torch.dtype) -> torch.dtype | None:
    """The precision an engine computes this input in: float32, or bfloat16 under a bfloat16 CPU
    autocast; None where the plain module runs instead (not float32 input and weights on a CPU,
    autograd recording, another autocast dtype)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weights_dtype != torch.float32:
        return None
    if torch.is_grad_enabled():
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32
    return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None


class FusedLinears:
    """The fused products over plain `nn.Linear` (and `nn.Conv2d`) layers, with the bfloat16
    copies of their weights kept until the parameters change (converting on every call, as
    autocast does, costs as much as a small product)."""

    def __init__(self) -> None:
        self._kept_bf16: dict[int, KeptWeights] = {}

    def precision(self, x: torch.Tensor) -> torch.dtype | None:
        """The precision an engine computes this input in (``engine_precision``); each engine
        names the weights that decide it."""
        raise NotImplementedError

    def runs(self, x: torch.Tensor) -> bool:
        """Whether the engine computes this input (see ``precision``)."""
        return self.precision(x) is not None

    def weights(self, layer: nn.Module, dtype: torch.dtype, packed: bool = False, as_linear=None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A layer's weight and bias in ``dtype``: the parameters themselves for float32.
        packed (linear layers): a bfloat16 weight is kept in oneDNN's own layout, for
        `_linear_pointwise` only, which otherwise reorders it on every call. as_linear: for a
        layer computed as a linear one (a transposed convolution as a per-pixel product),
        layer -> its (out, in) weight and bias, kept converted like a linear layer's."""
        if dtype == torch.float32 and as_linear is None:
            return layer.weight, layer.bias
        found = sources(layer.weight, layer.bias)
        kept = self._kept_bf16.get(id(layer))
        if kept is None or kept.sources != found or kept.weight.dtype != dtype:
            weight, bias = (layer.weight, layer.bias) if as_linear is None else as_linear(layer)
            bias = None if bias is None else bias.to(dtype)
            weight = weight.to(dtype)
            if packed and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
                weight = torch.ops.mkldnn._reorder_linear_weight(weight)
            kept = KeptWeights(found, weight, bias)
            self._kept_bf16[id(layer)] = kept
        return kept.weight, kept.bias

    def linear(self, x: torch.Tensor, layer: nn.Linear, post: str = "none") -> torch.Tensor:
        """layer(x) in x's precision, then ``post`` ("none", "relu" or "gelu", the erf GELU of
        `nn.GELU()`) on the output, in one oneDNN product."""
        weight, bias = self.weights(layer, x.dtype, packed=True)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post, [], "none" if post == "gelu" else "")

    def linear_add(self, x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
        """residual + layer(x), in the residual's precision (float32): the sum is taken inside the
        product when both are float32."""
        if x.dtype != residual.dtype:
            return residual + self.linear(x, layer)
        weight, bias = self.weights(layer, x.dtype, packed=True)
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
