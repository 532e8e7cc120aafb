"""The mask decoder's fast inference engine: FastMaskDecoder reads a plain
`samkit.modeling.mask_decoder.MaskDecoder`'s weights and computes its forward (the reference;
tests/core/test_decoder_parity.py holds the two together, logits to float32 rounding) with:

- the image-side work done once per image and kept (DecoderImage, KeptImage) while neither the
  image nor the weights change, so every later prompt on an image only runs the prompt side;
- the attention folded and, after the first block, read in factored form (transformer.py,
  factored.py);
- the first transposed convolution of the upscaling, the largest product per prompt (N = 4096
  image tokens times a C x 4*C1 = 256 x 256 matrix), computed from the final image tokens in
  factored form: the shared input tokens times the gain-scaled weight once per image, scaled
  per token, plus a rank-(2M + 3) product per prompt, ~2.3x fewer operations per prompt. Under
  autocast, and while autograd records, the direct product is used;
- prompts run in chunks, only the selected (or the best) mask tokens through their hypernetwork
  and the upscaling, and only the image tokens of a requested region upscaled.

The engine owns no parameters: the plain module is the one set of weights that state_dicts,
`.to()`, training and load_state_dict act on; the kept image work notices in-place weight
changes through the tensors' version counters.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..modeling.mask_decoder import MaskDecoder
from .factored import FactoredWeight, factor_weight
from .fused import FusedLinears, fused_linear_available
from .transformer import PreparedImage, prepare_image, transformer_forward

# Prompts decoded together, by device type. On a CPU the per-prompt image tokens (4 MB each in
# fp32) should stay in the last-level cache (the chunk size's measurements are in
# benchmarks/RESULTS.md, "Design measurements"). A GPU wants large batches.
DECODER_CHUNK = {"cpu": 8, "other": 64}
# Image tokens upscaled per step (see FastMaskDecoder.upscale_masks).
UPSCALE_ROWS = 1024


def decoder_chunk(device: torch.device) -> int:
    """How many prompts the decoder runs through the network at once on `device`."""
    return DECODER_CHUNK["cpu" if device.type == "cpu" else "other"]


class SameTensor:
    """Recognises a tensor again: cheaply when it is the same memory unchanged, else by values.

    It holds the tensor, so its memory cannot pass to another tensor while held, and the
    version counter (shared by all views of that memory) moves on every in-place change. A view
    with the same memory, layout and version therefore has the same values: the decoder gets a
    new expand() view of one weight, or the kept positional encoding, on every call. Inference
    tensors keep no version counter, so they, like anything else, are compared with a copy of
    the values taken when the tensor was first seen.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.version = None if tensor.is_inference() else tensor._version
        self.values = tensor.clone()

    def _same_memory(self, other: torch.Tensor) -> bool:
        mine = self.tensor
        return (
            self.version is not None
            and not other.is_inference()
            and other.data_ptr() == mine.data_ptr()
            and other.shape == mine.shape
            and other.stride() == mine.stride()
            and other.dtype == mine.dtype
            and other.device == mine.device
            and other._version == self.version
            and mine._version == self.version
        )

    def matches(self, other: torch.Tensor) -> bool:
        if self._same_memory(other):
            return True
        values = self.values
        return (
            other.shape == values.shape and other.dtype == values.dtype and other.device == values.device
            and torch.equal(other, values)
        )


class WeightVersion(NamedTuple):
    """Where a weight's memory is and its version counter (-1 for inference tensors, which keep
    none): the counter moves when the weight changes in place (load_state_dict, an optimiser
    step), the address when it is replaced (`.to()`, a new Parameter)."""

    data_ptr: int
    version: int


class DecoderImage(NamedTuple):
    """What the decoder keeps of one image with its dense prompt embedding (both batch 1): the
    transformer's image-side work and the first upscaling convolution in factored form (None
    under autocast, or while gradients are recorded: the direct products are taken)."""

    transformer: PreparedImage
    upscaling: FactoredWeight | None


class KeptImage(NamedTuple):
    """The one image whose work the engine keeps, and what it was computed from: autocast on or
    off and the image side's dtype (ImageMode), the weights' versions, the image embedding,
    positional encoding and dense prompt embedding."""

    mode: ImageMode
    weights: tuple[WeightVersion, ...]
    image_embeddings: SameTensor
    image_pe: SameTensor
    dense: SameTensor
    prepared: DecoderImage

    def serves(
        self,
        mode: ImageMode,
        weights: tuple[WeightVersion, ...],
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense: torch.Tensor,
    ) -> bool:
        return (
            self.mode == mode
            and self.weights == weights
            and self.image_embeddings.matches(image_embeddings)
            and self.image_pe.matches(image_pe)
            and self.dense.matches(dense)
        )


class ImageMode(NamedTuple):
    """How the kept image work was computed: under autocast or not, and the dtype of the
    image-sized tensors (bfloat16 in the reduced-precision mode, see image_side_dtype)."""

    autocast: bool
    image_dtype: torch.dtype


def image_side_dtype(image_embeddings: torch.Tensor, requested: torch.dtype) -> torch.dtype:
    """The dtype the decoder's image-sized work runs in: `requested` (a Predictor's
    decoder_dtype) for a float32 embedding without autocast or autograd, else the embedding's own
    (autocast and training take the plain computation's precision).

    The reduced-precision mode (bfloat16) runs in bfloat16 what has an image token axis: the
    image tokens and their updates, the attention against them and the upscaling (its first
    convolution in factored form, factored.py), and the blocks' MLPs (transformer.PackedMLP).
    The prompt tokens, their norms and small products stay float32. The image-sized products and
    passes are nearly all of a click's work; in bfloat16 they move half the bytes, and where the
    CPU has bfloat16 dot products (AVX-512 BF16, AMX) they run at twice the rate."""
    if (
        requested == image_embeddings.dtype
        or image_embeddings.dtype != torch.float32
        or torch.is_grad_enabled()
        or torch.is_autocast_enabled(image_embeddings.device.type)
    ):
        return image_embeddings.dtype
    return requested


class ConvAsMatrix(NamedTuple):
    """A ConvTranspose2d of kernel 2 and stride 2 as a per-pixel product: weight (C_in, 4*C_out)
    and bias (4*C_out,), the columns ordered (di, dj, out) for the 2x2 block each pixel writes."""

    weight: torch.Tensor
    bias: torch.Tensor

    def to(self, dtype: torch.dtype) -> ConvAsMatrix:
        return ConvAsMatrix(self.weight.to(dtype), self.bias.to(dtype))


def conv_as_matrix(conv: torch.nn.ConvTranspose2d) -> ConvAsMatrix:
    return ConvAsMatrix(conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1), conv.bias.repeat(4))


def conv_as_linear(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv_as_matrix as a linear layer's (out, in) weight (contiguous) and bias."""
    matrix = conv_as_matrix(conv)
    return matrix.weight.t().contiguous(), matrix.bias


def center_pixels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """x (..., 4*C) in a ConvAsMatrix's column order -> each output pixel's C columns minus their
    mean."""
    pixels = x.unflatten(-1, (-1, channels))
    return (pixels - pixels.mean(-1, keepdim=True)).flatten(-2)


def centered_first_conv(conv: torch.nn.ConvTranspose2d) -> ConvAsMatrix:
    """conv_as_matrix of the upscaling's first convolution with each output pixel's mean over its
    channels taken out of the weight and the bias. A pixel's mean is a linear map of the
    convolution's input, so the product then gives the layer norm's input already centred, and
    the norm needs only each pixel's scale (norm_gelu_centered)."""
    matrix = conv_as_matrix(conv)
    return ConvAsMatrix(center_pixels(matrix.weight, conv.out_channels), center_pixels(matrix.bias, conv.out_channels))


def norm_gelu_centered(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """GELU(norm(x)) for x (R, C) whose rows have mean zero, `norm` a LayerNorm2d over C: only
    each row's scale is computed. torch's layer norm recomputes the mean and costs about twice
    as much on these narrow rows (C = 64), most of all in bfloat16."""
    variance = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).square() / x.shape[-1]
    scale = (variance + norm.eps).rsqrt().to(x.dtype)[:, None] * norm.weight.to(x.dtype)
    return F.gelu(torch.addcmul(norm.bias.to(x.dtype), x, scale))


class FastMaskDecoder:
    """The fast inference engine of a plain MaskDecoder (held as `decoder`, not owned: no
    parameters, no submodule). Called like the decoder, with two more options (best_only,
    region); it keeps the last image's work (prepare_image)."""

    def __init__(self, decoder: MaskDecoder) -> None:
        self.decoder = decoder
        self._kept: KeptImage | None = None
        self._fused = FusedLinears()  # the reduced-precision mode's kept MLP and convolution weights

    def __getstate__(self) -> dict:
        # a copy (deepcopy, pickle) recomputes the kept image work rather than carrying ~35 MB
        return {"decoder": self.decoder, "_kept": None, "_fused": FusedLinears()}

    def second_packed(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The second upscaling convolution as a oneDNN linear weight (4*C2, C1) in `dtype`, in
        oneDNN's own layout, and its bias, kept (FusedLinears) until the parameters change; None
        where torch has no fused linear products. The reduced-precision mode's SAM 1 upscaling
        takes the GELU inside that product (~10% of the step; SAM 2's per-pixel bias gains
        nothing from it: benchmarks/RESULTS.md, "Design measurements")."""
        conv = self.decoder.output_upscaling[3]
        if not fused_linear_available() or conv.weight.device.type != "cpu":
            return None
        return self._fused.weights(conv, dtype, packed=True, as_linear=conv_as_linear)

    def __call__(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
        image_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1, C, 64, 64), image_pe (1, C, 64, 64), sparse (B, N, C), dense (B, C, 64, 64)
        -> low-res mask logits (B, M, 256, 256) and IoU predictions (B, M), as MaskDecoder.forward:
        M is 3 with multimask_output, else 1. best_only returns, per prompt, only the mask of
        those M with the highest predicted IoU (M = 1); the others are never upscaled. region
        (rows, cols): only the masks of that many image token rows and columns from the top left
        are upscaled, (B, M, 4 * rows, 4 * cols); each token's 4x4 mask pixels depend on that
        token alone, so they are the same values. image_dtype: bfloat16 for the reduced-precision
        mode (image_side_dtype), wherever the image work is shared (one dense embedding: no mask
        input, or one prompt; a batch of mask inputs decodes in float32); the logits are then
        bfloat16."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            # One dense embedding broadcast to every prompt (no mask input): keep batch 1 so the
            # image-side work is shared by all prompts.
            dense_prompt_embeddings = dense_prompt_embeddings[:1]
        prepared = None
        if dense_prompt_embeddings.shape[0] == 1 and image_embeddings.shape[0] == 1:
            prepared = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings, image_dtype)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        chunk = decoder_chunk(image_embeddings.device)
        masks, iou_pred = [], []
        for start in range(0, num_prompts, chunk):
            stop = min(start + chunk, num_prompts)
            dense = (
                dense_prompt_embeddings
                if dense_prompt_embeddings.shape[0] == 1
                else dense_prompt_embeddings[start:stop]
            )
            chunk_masks, chunk_iou = self.predict_masks(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings[start:stop],
                dense,
                prepared,
                selected,
                best_only,
                region,
            )
            masks.append(chunk_masks)
            iou_pred.append(chunk_iou)
        masks_all = torch.cat(masks) if len(masks) > 1 else masks[0]
        iou_all = torch.cat(iou_pred) if len(iou_pred) > 1 else iou_pred[0]
        return masks_all, iou_all

    def prepare_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense: torch.Tensor,
        image_dtype: torch.dtype = torch.float32,
    ) -> DecoderImage:
        """The decoder's image-only work for image_embeddings (1, C, H, W) with one dense prompt
        embedding (1, C, H, W), valid for any sparse prompts on them, with the image side in
        image_dtype (image_side_dtype).

        Kept (one image) while neither the inputs nor the weights change and no gradient is
        recorded, so every later click on an image, and every point batch of segment-everything,
        reuses it. Calling it right after an image is embedded makes the first click as fast
        as the next.
        """
        decoder = self.decoder
        mode = ImageMode(
            torch.is_autocast_enabled(image_embeddings.device.type), image_side_dtype(image_embeddings, image_dtype)
        )
        cacheable = not torch.is_grad_enabled()
        weights = self._weights_version() if cacheable else ()
        kept = self._kept
        if cacheable and kept is not None and kept.serves(mode, weights, image_embeddings, image_pe, dense):
            return kept.prepared
        factored = cacheable and not mode.autocast and mode.image_dtype in (torch.float32, torch.float64)
        transformer = prepare_image(decoder.transformer, image_embeddings + dense, image_pe, factored)
        upscaling = None
        if cacheable and not mode.autocast and image_embeddings.dtype in (torch.float32, torch.float64):
            # in the reduced-precision mode too: its low-rank product in bfloat16, the per-image
            # part computed in float32 (masks against float32 in tests/core/
            # test_reduced_precision_decoder.py)
            first = centered_first_conv(decoder.output_upscaling[0])
            upscaling = factor_weight(
                transformer.keys[0], first.weight, first.bias, [layer.norm4 for layer in decoder.transformer.layers]
            ).to(mode.image_dtype)
        prepared = DecoderImage(transformer.reduced(decoder.transformer, mode.image_dtype, self._fused), upscaling)
        if cacheable:
            self._kept = KeptImage(
                mode, weights, SameTensor(image_embeddings), SameTensor(image_pe), SameTensor(dense), prepared
            )
        return prepared

    def _weights_version(self) -> tuple[WeightVersion, ...]:
        """WeightVersion of every weight the kept image work was computed from (the
        transformer's and the first upscaling convolution's)."""
        decoder = self.decoder
        params = [*decoder.transformer.parameters(), *decoder.output_upscaling[0].parameters()]
        return tuple(WeightVersion(p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        prepared: DecoderImage | None = None,
        selected: slice = slice(None),
        best_only: bool = False,
        region: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, M, 256, 256) and IoU predictions (B, M) for B prompts, M the `selected` mask
        tokens (all four by default, as MaskDecoder.predict_masks), or with best_only the one of
        them with the highest IoU prediction (M = 1). `prepared` is prepare_image of the batch-1
        image + dense. region (rows, cols): masks of the top-left image tokens only,
        (B, M, 4 * rows, 4 * cols)."""
        decoder = self.decoder
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)

        src = None if prepared is not None else image_embeddings + dense_prompt_embeddings
        hypernetworks = list(enumerate(decoder.output_hypernetworks_mlps))[selected]
        # the IoU token and the selected mask tokens; the others' outputs are never read
        output_rows = [0] + [1 + i for i, _ in hypernetworks]
        hs, keys, factored_keys = transformer_forward(
            decoder.transformer, src, image_pe, tokens, None if prepared is None else prepared.transformer, output_rows
        )
        iou_pred = decoder.iou_prediction_head(hs[:, 0, :])[:, selected]
        mask_tokens_out = hs[:, 1:, :]  # in the order of hypernetworks
        if best_only:  # only the best mask is upscaled
            best = iou_pred.argmax(dim=1, keepdim=True)
            iou_pred = iou_pred.gather(1, best)
        if best_only and num_prompts == 1:  # a click: only the best token's hypernetwork runs
            j = int(best)
            hyper_in = hypernetworks[j][1](mask_tokens_out[:, j, :])[:, None]
        else:
            hyper_in = torch.stack([mlp(mask_tokens_out[:, j, :]) for j, (_, mlp) in enumerate(hypernetworks)], dim=1)
            if best_only:
                hyper_in = hyper_in[torch.arange(num_prompts, device=best.device)[:, None], best]
        grid = tuple(image_embeddings.shape[2:])
        height, width = grid if region is None else region
        if factored_keys is not None:
            first = factored_keys.times(prepared.upscaling, grid, region).view(-1, prepared.upscaling.constant.shape[0])
        else:
            conv = centered_first_conv(decoder.output_upscaling[0]).to(keys.dtype)
            keys = keys.reshape(keys.shape[0], *grid, keys.shape[-1])[:, :height, :width]
            first = torch.addmm(conv.bias, keys.reshape(-1, keys.shape[-1]), conv.weight)
        return self.upscale_masks(first, hyper_in, height, width), iou_pred

    def upscale_masks(
        self,
        first: torch.Tensor,
        hyper_in: torch.Tensor,
        height: int,
        width: int,
        second_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rest of output_upscaling and the hypernetwork product, on channels-last pixels.

        first (B*H*W, 4*C1) the first transposed convolution of the image tokens, each pixel's
        channels centred (centered_first_conv), hyper_in
        (B, M, C/8) -> mask logits (B, M, 4H, 4W). Computed pixel by pixel, the normalisation runs
        over a contiguous axis and no feature map is ever transposed; only the final logits are.
        second_bias (H*W*4, 4*C2), the same for every prompt, replaces the second convolution's
        bias per pixel (SAM 2 adds its stride-4 features there; rows and columns ordered as the
        convolution's output here, see fast/sam2_decoder.py).
        """
        conv1, norm, _, conv2, _ = self.decoder.output_upscaling
        batch, num_masks = hyper_in.shape[:2]
        second = conv_as_matrix(conv2).to(first.dtype)
        fuse = first.dtype == torch.bfloat16 and first.is_cpu and second_bias is None
        packed = self.second_packed(first.dtype) if fuse else None
        hyper_t = hyper_in.transpose(1, 2)
        pixels = height * width
        pieces = []
        # A few image tokens of one prompt at a time, so that each step's intermediates (up to
        # 8 MB per prompt at once) stay in a CPU's cache between the normalisation, convolution
        # and activations.
        for start in range(0, batch * pixels, pixels):
            for offset in range(0, pixels, UPSCALE_ROWS):
                piece = first[start + offset : start + min(offset + UPSCALE_ROWS, pixels)]
                bias = second.bias if second_bias is None else second_bias[4 * offset : 4 * (offset + len(piece))]
                x = norm_gelu_centered(piece.reshape(-1, conv1.out_channels), norm)
                # (tokens * 4, 4 * C2), ordered (ei, ej, out)
                if packed is None:
                    x = F.gelu(torch.addmm(bias, x, second.weight))
                else:
                    x = torch.ops.mkldnn._linear_pointwise(x, *packed, "gelu", [], "none")
                # x is indexed [i, j, di, dj, ei, ej, c]; contract c with each mask's hypernetwork vector
                pieces.append(x.view(-1, conv2.out_channels) @ hyper_t[start // pixels].to(x.dtype))
        masks = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # (B*H*W*16, M)
        masks = masks.view(batch, height, width, 2, 2, 2, 2, num_masks)
        # pixel row = 4i + 2di + ei, column = 4j + 2dj + ej. Two reorderings, first (i, di) and
        # (j, dj), then (2i + di, ei) and (2j + dj, ej), rather than one 8-d permute (timings in
        # benchmarks/RESULTS.md, "Design measurements").
        masks = masks.permute(0, 7, 1, 3, 2, 4, 5, 6).reshape(batch * num_masks, 2 * height, 2 * width, 2, 2)
        return masks.permute(0, 1, 3, 2, 4).reshape(batch, num_masks, 4 * height, 4 * width)
