"""The fast inference engine of SAM 2's mask decoder, over the plain
`samkit.modeling.sam2.mask_decoder.Sam2MaskDecoder` (the reference; tests/core/test_sam2_fast_decoder.py
holds the two together, logits to float32 rounding).

SAM 2's decoder is SAM 1's with an object-score token, a sigmoid on the IoU head, the dynamic
single-mask choice, and the high-resolution features added in the upscaling. It gets SAM 1's
treatment (fast/mask_decoder.py), reusing its pieces:

- the two-way transformer is SAM 1's module, so its image-side work is prepared once per image
  and the attention read in factored form (fast/transformer.py, factored.py);
- the stride-8 features (``conv_s1`` of level 1, added to the first transposed convolution's
  output) are prompt-independent: laid out per image token in the convolution's (di, dj,
  channel) column order, they become the per-token constant of the factored first convolution,
  so they cost nothing per prompt;
- the stride-4 features (``conv_s0`` of level 0, added to the second convolution's output) are
  laid out once per image in that convolution's row and column order with its bias added, and
  are the per-pixel bias of its product (FastMaskDecoder.upscale_masks);
- only the tokens whose outputs are read leave the final attention (the object-score token's
  output is unused for images); only the hypernetworks and upscaling of the masks returned run:
  with best_only, the best mask's; for the dynamic single mask, the single-mask token's first,
  and the best multimask token's only for the prompts whose single mask is not stable.

It owns no parameters and keeps the last image's work while the image, its high-res features,
the dense prompt embedding and the weights stay the same (as FastMaskDecoder).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..modeling.sam2.mask_decoder import Sam2MaskDecoder, stability_scores
from ..modeling.sam2.prompt_encoder import Sam2PromptEncoder
from .engine import DecoderEngine
from .factored import FactoredWeight, factor_weight
from .mask_decoder import (
    FastMaskDecoder,
    ImageMode,
    SameTensor,
    WeightVersion,
    center_pixels,
    centered_first_conv,
    decoder_chunk,
    image_side_dtype,
)
from .transformer import PreparedImage, prepare_image, transformer_forward

# token rows of the decoder's output tokens: [object score, IoU, 4 mask tokens] + prompts
IOU_ROW = 1
FIRST_MASK_ROW = 2


class HighRes(NamedTuple):
    """One image's high-res features laid out for the upscaling, each with its convolution's bias
    added: s1_bias (H, W, 4*C1), the stride-8 map per image token in the first convolution's
    (di, dj, c) column order; s0_bias (H*W*4, 4*C2), the stride-4 map, one row per
    first-convolution pixel (i, j, di, dj) and its (ei, ej, c) columns. Each is a per-pixel
    bias of its convolution's product; s1_bias has each pixel's channels centred, as the first
    convolution's product is (centered_first_conv)."""

    s1_bias: torch.Tensor
    s0_bias: torch.Tensor

    def region(self, height: int, width: int) -> HighRes:
        """The same for the top-left (height, width) image tokens."""
        grid_h, grid_w = self.s1_bias.shape[:2]
        if (height, width) == (grid_h, grid_w):
            return self
        s0 = self.s0_bias.view(grid_h, grid_w, 4, -1)[:height, :width].reshape(height * width * 4, -1)
        return HighRes(self.s1_bias[:height, :width], s0)

    def to(self, dtype: torch.dtype) -> HighRes:
        return HighRes(self.s1_bias.to(dtype), self.s0_bias.to(dtype))


def lay_out_high_res(
    feat_s0: torch.Tensor,
    feat_s1: torch.Tensor,
    first_bias: torch.Tensor,
    second_bias: torch.Tensor,
    grid: tuple[int, int],
) -> HighRes:
    """feat_s0 (1, C2, 4H, 4W) and feat_s1 (1, C1, 2H, 2W), projected -> HighRes for the (H, W)
    token grid. Pixel row 2i + di of feat_s1 belongs to token row i; pixel row 4i + 2di + ei of
    feat_s0 to token row i, first-convolution offset di and second-convolution offset ei."""
    height, width = grid
    c1, c2 = feat_s1.shape[1], feat_s0.shape[1]
    s1 = feat_s1[0].reshape(c1, height, 2, width, 2).permute(1, 3, 2, 4, 0).reshape(height, width, 4 * c1)
    s0 = feat_s0[0].reshape(c2, height, 2, 2, width, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)  # (i, j, di, dj, ei, ej, c)
    s0 = s0.reshape(height * width * 4, 4 * c2) + second_bias
    return HighRes(center_pixels(s1 + first_bias, c1).contiguous(), s0.contiguous())


class Sam2DecoderImage(NamedTuple):
    """What the decoder keeps of one image with its dense prompt embedding: the transformer's
    image-side work, the first upscaling convolution in factored form with the stride-8 features
    as its per-token constant (None under autocast or autograd), and the laid-out features."""

    transformer: PreparedImage
    upscaling: FactoredWeight | None
    high_res: HighRes


class KeptSam2Image(NamedTuple):
    """The one image whose work the engine keeps, and what it was computed from."""

    mode: ImageMode
    weights: tuple[WeightVersion, ...]
    inputs: tuple[SameTensor, ...]  # image embedding, positional encoding, dense embedding, feat_s0, feat_s1
    prepared: Sam2DecoderImage

    def serves(self, mode: ImageMode, weights: tuple[WeightVersion, ...], inputs: tuple[torch.Tensor, ...]) -> bool:
        return (
            self.mode == mode
            and self.weights == weights
            and all(kept.matches(tensor) for kept, tensor in zip(self.inputs, inputs))
        )


class FastSam2MaskDecoder(FastMaskDecoder):
    """The fast inference engine of a plain Sam2MaskDecoder (held as `decoder`, not owned).
    Called like the decoder, with two more options (best_only, region); returns low-res logits
    and IoU predictions (the object score, unused for images, is not computed)."""

    decoder: Sam2MaskDecoder

    def __call__(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        multimask_output: bool,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
        image_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1, C, 64, 64), image_pe (1, C, 64, 64), sparse (B, N, C), dense
        (1 or B, C, 64, 64), high_res_features (1, 32, 256, 256), (1, 64, 128, 128) projected ->
        low-res logits (B, M, 256, 256) and IoU predictions (B, M), as Sam2MaskDecoder.forward
        (M = 3 with multimask_output, else 1, the dynamic single mask in eval mode). best_only:
        per prompt only the mask of highest predicted IoU (M = 1). region (rows, cols): only the
        top-left (4 * rows, 4 * cols) of the logits are computed. image_dtype: bfloat16 for the
        reduced-precision mode (mask_decoder.image_side_dtype), as FastMaskDecoder's."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            dense_prompt_embeddings = dense_prompt_embeddings[:1]  # one broadcast dense embedding
        if image_embeddings.shape[0] != 1 or any(f.shape[0] != 1 for f in high_res_features):
            raise ValueError("the fast SAM 2 decoder takes one image (batch 1) per call")
        grid = tuple(image_embeddings.shape[2:])
        prepared = None
        if dense_prompt_embeddings.shape[0] == 1:
            prepared = self.prepare_image(
                image_embeddings, image_pe, dense_prompt_embeddings, high_res_features, image_dtype
            )
        high_res = prepared.high_res if prepared is not None else self.lay_out(high_res_features, grid)
        chunk = decoder_chunk(image_embeddings.device)
        masks, iou_pred = [], []
        for start in range(0, num_prompts, chunk):
            stop = min(start + chunk, num_prompts)
            dense = dense_prompt_embeddings if prepared is not None else dense_prompt_embeddings[start:stop]
            chunk_masks, chunk_iou = self.predict_chunk(
                image_embeddings, image_pe, sparse_prompt_embeddings[start:stop], dense, high_res, prepared,
                multimask_output, best_only, region,
            )
            masks.append(chunk_masks)
            iou_pred.append(chunk_iou)
        if len(masks) == 1:
            return masks[0], iou_pred[0]
        return torch.cat(masks), torch.cat(iou_pred)

    def lay_out(self, high_res_features: tuple[torch.Tensor, torch.Tensor], grid: tuple[int, int]) -> HighRes:
        feat_s0, feat_s1 = high_res_features
        first, _, _, second, _ = self.decoder.output_upscaling
        return lay_out_high_res(feat_s0, feat_s1, first.bias.repeat(4), second.bias.repeat(4), grid)

    def prepare_image(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        image_dtype: torch.dtype = torch.float32,
    ) -> Sam2DecoderImage:
        """The decoder's image-only work for one image (batch 1) with one dense prompt embedding,
        valid for any sparse prompts on it, with the image side in image_dtype; kept as
        FastMaskDecoder.prepare_image keeps SAM 1's."""
        decoder = self.decoder
        mode = ImageMode(
            torch.is_autocast_enabled(image_embeddings.device.type), image_side_dtype(image_embeddings, image_dtype)
        )
        cacheable = not torch.is_grad_enabled()
        weights = self._weights_version() if cacheable else ()
        inputs = (image_embeddings, image_pe, dense, *high_res_features)
        kept = self._kept
        if cacheable and isinstance(kept, KeptSam2Image) and kept.serves(mode, weights, inputs):
            return kept.prepared
        grid = tuple(image_embeddings.shape[2:])
        high_res = self.lay_out(high_res_features, grid).to(mode.image_dtype)
        factored = cacheable and not mode.autocast and mode.image_dtype in (torch.float32, torch.float64)
        transformer = prepare_image(decoder.transformer, image_embeddings + dense, image_pe, factored)
        upscaling = None
        # in the reduced-precision mode too (as FastMaskDecoder)
        if cacheable and not mode.autocast and image_embeddings.dtype in (torch.float32, torch.float64):
            first = centered_first_conv(decoder.output_upscaling[0])
            norms = [layer.norm4 for layer in decoder.transformer.layers]
            upscaling = factor_weight(transformer.keys[0], first.weight, None, norms)
            # the stride-8 features and the bias join the constant: (N, 4*C1), per image token
            s1_bias = high_res.s1_bias.view(-1, first.weight.shape[1])
            upscaling = upscaling._replace(constant=upscaling.constant + s1_bias).to(mode.image_dtype)
        transformer = transformer.reduced(decoder.transformer, mode.image_dtype, self._fused)
        prepared = Sam2DecoderImage(transformer, upscaling, high_res)
        if cacheable:
            self._kept = KeptSam2Image(mode, weights, tuple(SameTensor(t) for t in inputs), prepared)
        return prepared

    def _weights_version(self) -> tuple[WeightVersion, ...]:
        """WeightVersion of every weight the kept image work was computed from (the transformer's
        and the two upscaling convolutions': the second's bias is in the laid-out features)."""
        decoder = self.decoder
        params = [
            *decoder.transformer.parameters(),
            *decoder.output_upscaling[0].parameters(),
            decoder.output_upscaling[3].bias,
        ]
        return tuple(WeightVersion(p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)

    def predict_chunk(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: HighRes,
        prepared: Sam2DecoderImage | None,
        multimask_output: bool,
        best_only: bool,
        region: tuple[int, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, M, h, w) and IoU predictions (B, M) for the B prompts of one chunk."""
        decoder = self.decoder
        num_prompts = sparse.shape[0]
        dynamic = not multimask_output and decoder.dynamic_multimask_via_stability and not decoder.training
        # the mask tokens whose outputs are read
        wanted = [1, 2, 3] if multimask_output else ([0, 1, 2, 3] if dynamic else [0])
        output_tokens = torch.cat(
            [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight]
        )
        tokens = torch.cat([output_tokens.to(sparse.dtype).unsqueeze(0).expand(num_prompts, -1, -1), sparse], dim=1)
        src = None if prepared is not None else image_embeddings + dense
        hs, keys, factored_keys = transformer_forward(
            decoder.transformer, src, image_pe, tokens, None if prepared is None else prepared.transformer,
            [IOU_ROW] + [FIRST_MASK_ROW + i for i in wanted],
        )
        iou_all = torch.sigmoid(decoder.iou_prediction_head(hs[:, 0]))  # (B, 4)
        mask_tokens = dict(zip(wanted, hs[:, 1:].unbind(1)))
        grid = tuple(image_embeddings.shape[2:])

        def upscale(token_index: torch.Tensor, rows: torch.Tensor | None, area: tuple[int, int] | None) -> torch.Tensor:
            """Masks (len(rows), 1, h, w) of mask token token_index[k] for prompt rows[k] (all when None)."""
            picked = range(num_prompts) if rows is None else rows.tolist()
            choice = token_index.tolist()
            hyper = torch.stack(
                [decoder.output_hypernetworks_mlps[t](mask_tokens[t][p]) for p, t in zip(picked, choice)]
            )[:, None]
            return self.image_masks(keys, factored_keys, prepared, high_res, hyper, grid, area, rows)

        if multimask_output:
            iou = iou_all[:, 1:]
            if not best_only:
                hyper = torch.stack([decoder.output_hypernetworks_mlps[t](mask_tokens[t]) for t in wanted], dim=1)
                return self.image_masks(keys, factored_keys, prepared, high_res, hyper, grid, region, None), iou
            best = iou.argmax(dim=1, keepdim=True)
            return upscale(best[:, 0] + 1, None, region), iou.gather(1, best)
        if not dynamic:
            return upscale(torch.zeros(num_prompts, dtype=torch.long), None, region), iou_all[:, :1]
        # the single-mask token's mask where it is stable (over the whole low-res mask), else the
        # best multimask output by predicted IoU
        single = upscale(torch.zeros(num_prompts, dtype=torch.long), None, None)
        stable = stability_scores(single[:, 0], decoder.dynamic_multimask_stability_delta)
        stable = stable >= decoder.dynamic_multimask_stability_thresh
        best = iou_all[:, 1:].argmax(dim=1) + 1
        iou = torch.where(stable, iou_all[:, 0], iou_all.gather(1, best[:, None])[:, 0])[:, None]
        unstable = torch.nonzero(~stable)[:, 0]
        if len(unstable):
            single[unstable] = upscale(best[unstable], unstable, None)
        if region is not None:
            single = single[..., : 4 * region[0], : 4 * region[1]]
        return single, iou

    def image_masks(
        self,
        keys: torch.Tensor,
        factored_keys,
        prepared: Sam2DecoderImage | None,
        high_res: HighRes,
        hyper_in: torch.Tensor,
        grid: tuple[int, int],
        region: tuple[int, int] | None,
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """The upscaled image tokens of prompts `rows` (all when None) times hyper_in (R, M, C/8)
        -> logits (R, M, 4h, 4w) of the (h, w) = region (or grid) top-left tokens."""
        conv = self.decoder.output_upscaling[0]
        height, width = grid if region is None else region
        if factored_keys is not None:
            if rows is not None:
                factored_keys = select_prompts(factored_keys, rows)
            upscaling = prepared.upscaling
            first = factored_keys.times(upscaling, grid, region).view(-1, upscaling.constant.shape[-1])
        else:
            if rows is not None:
                keys = keys[rows]
            weight = centered_first_conv(conv).weight.to(keys.dtype)
            keys = keys.reshape(keys.shape[0], *grid, keys.shape[-1])[:, :height, :width]
            s1_bias = high_res.s1_bias[:height, :width].reshape(height * width, -1)
            if keys.shape[0] == 1:  # the per-pixel bias is the product's
                first = torch.addmm(s1_bias, keys.reshape(-1, keys.shape[-1]), weight)
            else:
                first = (keys.reshape(keys.shape[0], height * width, -1) @ weight + s1_bias).view(-1, weight.shape[1])
        local = high_res.region(height, width)
        return self.upscale_masks(first, hyper_in, height, width, second_bias=local.s0_bias)


def select_prompts(keys, rows: torch.Tensor):
    """FactoredKeys of the prompts `rows` only."""
    updates = [type(u)(*(t[rows] for t in u)) for u in keys.updates]
    return type(keys)(keys.left[rows], keys.scale[rows], updates)


class Sam2DecoderEngine(DecoderEngine):
    """The kept dense positional encoding (`dense_pe()`) and the FastSam2MaskDecoder
    (`mask_decoder`) of one SAM 2 model's plain prompt encoder and mask decoder."""

    prompt_encoder_type = Sam2PromptEncoder
    mask_decoder_type = Sam2MaskDecoder
    fast_decoder_type = FastSam2MaskDecoder
