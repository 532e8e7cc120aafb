"""ONNX export of the SAM 1 family (ViT-B/L/H, MobileSAM): the image encoder, and the prompt
decoder with the official `SamOnnxModel`'s inputs and outputs.

The graphs are traced from the plain reference modules (official-style `PromptEncoder` /
`MaskDecoder` interface: `pe_layer`, `point_embeddings`, `not_a_point_embed`, `no_mask_embed`,
`mask_downscaling`, `get_dense_pe()`, `predict_masks(...)`), never from samkit's fast CPU decoder,
whose per-image caches and in-place products have no place in a graph.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .exporter import (
    Graph, decoder_description, embed_labels, embed_masks, encoder_graph, hold_decoder_modules, model_description,
    plain_modules,
)

if TYPE_CHECKING:
    from .exporter import ExportOptions

ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = (
    "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# How single-mask decoders pick their mask, as the official SamOnnxModel: for one click (one point
# plus the padding point, or a box's two corners) the best of the three multimask outputs, for
# more points the single-mask output. The weight only has to dwarf the IoU predictions.
SINGLE_MASK_REWEIGHT = 1000.0


class Sam1Encoder(nn.Module):
    """Preprocessed image (1, 3, 1024, 1024), normalised and zero-padded as samkit's
    `Sam.preprocess` makes it -> image embedding (1, 256, 64, 64)."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


@contextlib.contextmanager
def whole_attention(image_encoder: nn.Module) -> Iterator[None]:
    """Trace the ViT's attention as one product per block.

    On a CPU samkit's ViT computes global attention a slice of query rows at a time, so that the
    relative-position bias stays cache-sized (BIAS_CHUNK_BYTES in the encoder's module). Traced,
    that is 64 slices and writes per global block, which makes ViT-B's export ~30x slower (see
    benchmarks/RESULTS.md) and has onnxruntime run the slices one by one. onnxruntime plans its
    own memory, so the graph gets the plain form: the whole bias at once, as the official ViT.
    """
    module = sys.modules.get(type(image_encoder).__module__)
    saved = getattr(module, "BIAS_CHUNK_BYTES", None)
    if saved is None:
        yield
        return
    module.BIAS_CHUNK_BYTES = 2**62
    try:
        yield
    finally:
        module.BIAS_CHUNK_BYTES = saved


class Sam1Decoder(nn.Module):
    """Prompts -> masks, with the official SamOnnxModel's inputs and outputs.

    Inputs: image_embeddings (1, 256, 64, 64); point_coords (1, N, 2) XY in the 1024-px input
    frame; point_labels (1, N) float: 1 foreground, 0 background, 2 / 3 a box's top-left and
    bottom-right corners, -1 padding (add a (0, 0) point labelled -1 when there is no box);
    mask_input (1, 1, 256, 256) low-res logits of an earlier call; has_mask_input (1,) 1 or 0;
    orig_im_size (2,) float (H, W) of the original image.
    Outputs: masks (1, M, H, W) logits at the original size, iou_predictions (1, M), low_res_masks
    (1, M, 256, 256); M = 4 (SAM's single-mask output first, then the three multimask outputs),
    or 1 with single_mask (chosen as the official export chooses, see SINGLE_MASK_REWEIGHT).
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, single_mask: bool = False) -> None:
        super().__init__()
        hold_decoder_modules(self, prompt_encoder, mask_decoder, single_mask)
        self.image_size = max(self.input_size)

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """(1, N, 2) coords and (1, N) float labels -> sparse embeddings (1, N, 256), as the prompt
        encoder embeds points and box corners (exporter.embed_labels)."""
        embedding = self.prompt_encoder.pe_layer.forward_with_coords(point_coords + 0.5, self.input_size)
        return embed_labels(self.prompt_encoder, embedding, point_labels.unsqueeze(-1))

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """The dense embedding: of the mask input when has_mask_input is 1, else "no mask"."""
        return embed_masks(self.prompt_encoder, mask_input, has_mask_input)

    def select_single(self, masks: torch.Tensor, scores: torch.Tensor, num_points: int):
        weight = torch.zeros_like(scores[:1])
        weight[:, 0] = SINGLE_MASK_REWEIGHT
        best = torch.argmax(scores + (num_points - 2.5) * weight, dim=1, keepdim=True)  # (B, 1)
        scores = torch.gather(scores, 1, best)
        index = best[:, :, None, None].expand(-1, -1, masks.shape[2], masks.shape[3])
        return torch.gather(masks, 1, index), scores

    def upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """SAM's postprocessing with the image size as data, so no size is baked into the graph:
        bilinear to the 1024 input frame, crop the resized image, bilinear to the original size.

        The crop and the output size come from the orig_im_size values (`.item()` plus bounds
        that the dynamo exporter records as facts about those values). The official export
        writes `int(tensor)`, which today's TorchScript tracer turns into a constant: its graphs
        crop every image like the example image of the export (wrong masks for other aspect
        ratios)."""
        size = self.image_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        original = orig_im_size.to(torch.float32)
        resized = torch.floor(original * (size / torch.max(original)) + 0.5).to(torch.int64)
        rows, cols = resized[0].item(), resized[1].item()
        torch._check(rows >= 1)
        torch._check(rows <= size)
        torch._check(cols >= 1)
        torch._check(cols <= size)
        masks = masks[..., :rows, :cols]
        height, width = orig_im_size.to(torch.int64)[0].item(), orig_im_size.to(torch.int64)[1].item()
        torch._check(height >= 1)
        torch._check(width >= 1)
        return F.interpolate(masks, (height, width), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        low_res, scores = self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)
        if self.single_mask:
            low_res, scores = self.select_single(low_res, scores, point_coords.shape[1])
        return self.upscale(low_res, orig_im_size), scores, low_res


class Sam1Export:
    """The SAM 1 family's graphs: "encoder" (Sam1Encoder) and "decoder" (Sam1Decoder)."""

    name = "sam"  # registry.SAM1.name
    parts = ("encoder", "decoder")
    quantizable = ("decoder",)

    def accepts(self, model: object) -> bool:
        from ..modeling.sam import Sam

        return isinstance(model, Sam)

    def graph(self, model: nn.Module, part: str, options: "ExportOptions") -> Graph:
        size = model.image_encoder.img_size
        if part == "encoder":
            return encoder_graph(
                Sam1Encoder(model.image_encoder), size, ENCODER_OUTPUTS, lambda: whole_attention(model.image_encoder)
            )
        from ..modeling.mask_decoder import MaskDecoder
        from ..modeling.prompt_encoder import PromptEncoder

        prompt_encoder, mask_decoder = plain_modules(model, PromptEncoder, MaskDecoder, "SAM")
        decoder = Sam1Decoder(prompt_encoder, mask_decoder, single_mask=options.single_mask)
        points = 5 if options.dynamic_points else options.num_points
        embedding = prompt_encoder.image_embedding_size
        low_res = prompt_encoder.mask_input_size
        generator = torch.Generator().manual_seed(0)
        inputs = {
            "image_embeddings": torch.randn(1, prompt_encoder.embed_dim, *embedding, generator=generator),
            "point_coords": torch.rand(1, points, 2, generator=generator) * size,
            "point_labels": torch.randint(-1, 4, (1, points), generator=generator).float(),
            "mask_input": torch.randn(1, 1, *low_res, generator=generator),
            "has_mask_input": torch.ones(1),
            "orig_im_size": torch.tensor([1500.0, 2250.0]),
        }
        axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
        num_masks = 1 if options.single_mask else mask_decoder.num_mask_tokens
        return Graph(
            decoder,
            inputs,
            DECODER_OUTPUTS,
            dynamic_axes=axes if options.dynamic_points else {},
            description=decoder_description(options, num_masks),
        )

    def metadata(self, model: nn.Module, options: "ExportOptions") -> dict:
        size = model.image_encoder.img_size
        return {
            **model_description(self.name, model, size),
            "preprocessing": {
                "color": "RGB",
                "resize": f"longest side to {size} px, the other rounded half up (h * s + 0.5), Pillow bilinear",
                "normalize": "(pixel - pixel_mean) / pixel_std, per channel, on 0..255 values",
                "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
                "pixel_std": [float(v) for v in model.pixel_std.flatten()],
                "pad": f"zeros at the bottom and right, after normalising, to {size} x {size}",
                "layout": "NCHW float32",
            },
            "prompts": {
                "point_coords": "XY pixels scaled to the resized image (x * new_w / w, y * new_h / h)",
                "point_labels": "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding",
                "padding": "without a box, append point (0, 0) labelled -1",
                "mask_input": "low_res_masks of an earlier call, with has_mask_input 1 (else zeros and 0)",
                "orig_im_size": "(H, W) of the original image, float32",
            },
            "outputs": {
                "masks": "logits at orig_im_size; mask = logits > mask_threshold",
                "order": "all masks: SAM's single-mask output first, then the three multimask outputs",
            },
        }


SAM1 = Sam1Export()
