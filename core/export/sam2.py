"""ONNX export of SAM 2 / 2.1 image models: the Hiera image encoder and the prompt decoder, with the
tensor names and shapes that samexporter writes and FiftyOne's in-App SAM 2 worker runs.

The interface (facts from vietanhdev/samexporter `samexporter/export_sam2.py` and
`samexporter/sam2_onnx.py`, and from the FiftyOne App's SAM 2 web worker, shipped with fiftyone
1.19 as `fiftyone/server/static/assets/worker-*.js`):

* encoder: in ``image`` (1, 3, 1024, 1024) float32, the image resized to 1024 x 1024 (aspect ratio
  not kept), divided by 255 and ImageNet-normalised; out, in this order, ``high_res_feats_0``
  (1, 32, 256, 256), ``high_res_feats_1`` (1, 64, 128, 128) and ``image_embed`` (1, 256, 64, 64),
  with the decoder's ``conv_s0`` / ``conv_s1`` and ``no_mem_embed`` already applied.
* decoder: in ``image_embed``, ``high_res_feats_0``, ``high_res_feats_1`` (the encoder's outputs,
  batch 1), ``point_coords`` (L, N, 2) XY in the 1024 x 1024 frame, ``point_labels`` (L, N) float
  (1 foreground, 0 background, 2 / 3 a box's top-left / bottom-right corner, -1 padding),
  ``mask_input`` (L, 1, 256, 256) and ``has_mask_input`` (L,) or (1,); L prompts ("labels") are
  decoded at once, N is any point count. There is no ``orig_im_size``: the App feeds exactly these
  seven inputs (an extra required input would fail its session.run), and masks come back at
  256 x 256 for the caller to resize. The padding point (0, 0) labelled -1 that SAM 2's prompt
  encoder appends to every prompt is appended inside the graph, so callers send only their points.
  Out: ``masks`` (L, 3, 256, 256), the three multimask logits clamped to +-32 as samexporter's (the
  App takes the one of highest ``iou_predictions`` (L, 3) and thresholds it at 0), or with
  single_mask one mask (L, 1, 256, 256) chosen as SAM 2's predictor chooses it for
  multimask_output=False (stability, see Sam2MaskDecoder). Two more outputs, which those callers
  ignore, give samkit.OnnxPredictor what samkit.Predictor returns: ``all_masks`` (L, 4, 256, 256),
  all four mask logits unclamped (single-mask token first), and ``all_iou_predictions`` (L, 4).

The graphs are traced from samkit's plain modules (modeling/sam2); SAM 2 has no fast path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import SamkitError
from .exporter import (
    Graph, decoder_description, embed_labels, embed_masks, encoder_graph, hold_decoder_modules, model_description,
    plain_modules,
)

if TYPE_CHECKING:
    from .exporter import ExportOptions

ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embed")
DECODER_INPUTS = (
    "image_embed", "high_res_feats_0", "high_res_feats_1",
    "point_coords", "point_labels", "mask_input", "has_mask_input",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "all_masks", "all_iou_predictions")
# What the FiftyOne App downloads from FIFTYONE_MODEL_WEIGHTS_BASE_SAM2 (fiftyone 1.19: the App's
# worker, fiftyone/server/static/assets/worker-*.js, asks `GET /runtime-assets/models/sam2/<file>`
# for these two names; fiftyone/server/routes/runtime_assets.py resolves them against the variable,
# a URL or a local folder). The encoder's name is what onnxruntime's converter writes for
# --optimization_style Runtime: an ORT-format model.
FIFTYONE_APP_ENV = "FIFTYONE_MODEL_WEIGHTS_BASE_SAM2"
FIFTYONE_APP_FILES = ("encoder.with_runtime_opt.ort", "decoder.onnx")
LOW_RES_LOGIT_LIMIT = 32.0  # as samexporter's decoder and SAM2ImagePredictor clamp the low-res logits


class Sam2Encoder(nn.Module):
    """Preprocessed image (1, 3, 1024, 1024) -> high_res_feats_0, high_res_feats_1, image_embed:
    ``Sam2.embed`` (image encoder, conv_s0 / conv_s1, no_mem_embed) in samexporter's output order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        # only the two projections of the mask decoder: holding the decoder would put its weights
        # into the encoder file too
        self.conv_s0 = model.mask_decoder.conv_s0
        self.conv_s1 = model.mask_decoder.conv_s1
        self.no_mem_embed = model.no_mem_embed

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat_s0, feat_s1, image_embed = self.image_encoder(image)
        image_embed = image_embed + self.no_mem_embed.reshape(1, -1, 1, 1)
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1), image_embed


class Sam2Decoder(nn.Module):
    """Prompts and the encoder's three outputs -> low-res masks; see the module doc for the names."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, single_mask: bool = False) -> None:
        super().__init__()
        hold_decoder_modules(self, prompt_encoder, mask_decoder, single_mask)

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """(L, N, 2) coords and (L, N) labels, plus the padding point SAM 2 appends to every prompt
        -> sparse embeddings (L, N + 1, 256), as Sam2PromptEncoder embeds points (labels 0-3, -1
        padding; exporter.embed_labels)."""
        batch = point_coords.shape[0]
        coords = torch.cat([point_coords, point_coords.new_zeros(batch, 1, 2)], dim=1)
        labels = torch.cat([point_labels, -point_labels.new_ones(batch, 1)], dim=1).unsqueeze(-1)
        embedding = self.prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, self.input_size)
        return embed_labels(self.prompt_encoder, embedding, labels)

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """The dense embedding per prompt: of its mask input where has_mask_input is 1, else "no mask"."""
        return embed_masks(self.prompt_encoder, mask_input, has_mask_input.reshape(-1, 1, 1, 1))

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        all_masks, all_iou, _ = self.mask_decoder.predict_masks(
            image_embed, self.image_pe, sparse, dense, (high_res_feats_0, high_res_feats_1)
        )
        if self.single_mask:
            masks, iou = self.mask_decoder.select_stable_single_mask(all_masks, all_iou)
        else:
            masks, iou = all_masks[:, 1:], all_iou[:, 1:]
        masks = masks.clamp(-LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)
        return masks, iou, all_masks, all_iou


class Sam2Export:
    """The SAM 2 / 2.1 family's graphs: "encoder" (Sam2Encoder) and "decoder" (Sam2Decoder)."""

    name = "sam2"
    parts = ("encoder", "decoder")
    quantizable = ("decoder",)

    def accepts(self, model: object) -> bool:
        from ..modeling.sam2.model import Sam2

        return isinstance(model, Sam2)

    def graph(self, model: nn.Module, part: str, options: "ExportOptions") -> Graph:
        size = model.image_size
        if part == "encoder":
            return encoder_graph(Sam2Encoder(model), size, ENCODER_OUTPUTS)
        from ..modeling.sam2.mask_decoder import Sam2MaskDecoder
        from ..modeling.sam2.prompt_encoder import Sam2PromptEncoder

        prompt_encoder, mask_decoder = plain_modules(model, Sam2PromptEncoder, Sam2MaskDecoder, "SAM 2")
        decoder = Sam2Decoder(prompt_encoder, mask_decoder, single_mask=options.single_mask)
        embedding = tuple(int(v) for v in prompt_encoder.image_embedding_size)
        low_res = tuple(int(v) for v in prompt_encoder.mask_input_size)
        dim = prompt_encoder.embed_dim
        points = 5 if options.dynamic_points else options.num_points
        # two prompts in the example: torch.export fixes an axis whose example size is 1
        labels = 2
        generator = torch.Generator().manual_seed(0)
        inputs = {
            "image_embed": torch.randn(1, dim, *embedding, generator=generator),
            "high_res_feats_0": torch.randn(1, dim // 8, 4 * embedding[0], 4 * embedding[1], generator=generator),
            "high_res_feats_1": torch.randn(1, dim // 4, 2 * embedding[0], 2 * embedding[1], generator=generator),
            "point_coords": torch.rand(labels, points, 2, generator=generator) * size,
            "point_labels": torch.randint(-1, 4, (labels, points), generator=generator).float(),
            "mask_input": torch.randn(labels, 1, *low_res, generator=generator),
            "has_mask_input": torch.tensor([1.0, 0.0]),
        }
        axes: dict[str, dict[int, str]] = {
            "point_coords": {0: "num_labels"},
            "point_labels": {0: "num_labels"},
            "mask_input": {0: "num_labels"},
            # (1,) is allowed too (the App sends one flag), so its own axis, broadcast in the graph
            "has_mask_input": {0: "num_mask_flags"},
        }
        if options.dynamic_points:
            axes["point_coords"][1] = "num_points"
            axes["point_labels"][1] = "num_points"
        num_masks = 1 if options.single_mask else mask_decoder.num_mask_tokens - 1
        return Graph(
            decoder,
            inputs,
            DECODER_OUTPUTS,
            dynamic_axes=axes,
            description=decoder_description(options, num_masks, num_all_masks=mask_decoder.num_mask_tokens),
        )

    def metadata(self, model: nn.Module, options: "ExportOptions") -> dict:
        size = model.image_size
        return {
            **model_description(self.name, model, size, high_res_shapes=[[32, 256, 256], [64, 128, 128]]),
            "preprocessing": {
                "color": "RGB",
                "scale": "pixel / 255",
                "resize": f"to {size} x {size} (aspect ratio not kept), bilinear with antialias on float values",
                "normalize": "(value - pixel_mean) / pixel_std, per channel, on 0..1 values",
                "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
                "pixel_std": [float(v) for v in model.pixel_std.flatten()],
                "pad": "none",
                "layout": "NCHW float32",
            },
            "prompts": {
                "point_coords": f"XY pixels scaled to the {size} x {size} frame (x * {size} / w, y * {size} / h)",
                "point_labels": "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding",
                "boxes": "as two points labelled 2 and 3, in front of the other points",
                "padding": "none needed: the graph appends SAM 2's padding point itself",
                "mask_input": "all_masks[:, i:i+1] of an earlier call, with has_mask_input 1 (else zeros and 0)",
            },
            "outputs": {
                "masks": "low-res logits (clamped to +-32); resize bilinearly to (H, W), mask = logits > 0",
                "order": "masks: the three multimask outputs (or one with single_mask); all_masks: the "
                "single-mask token's output first, then the three multimask outputs",
            },
        }


SAM2 = Sam2Export()


def write_ort_encoder(encoder: Path, folder: Path) -> str:
    """Convert the exported encoder to ORT format with runtime optimisations, as the FiftyOne App
    downloads it; returns the new file's name (in `folder`). onnxruntime's own converter does it
    (convert_onnx_models_to_ort, --optimization_style Runtime), into a scratch folder, because it
    also writes an operator list beside the model that the App does not use."""
    import shutil

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    scratch = folder / ".ort-conversion"
    try:
        convert_onnx_models_to_ort(encoder, output_dir=scratch, optimization_styles=[OptimizationStyle.Runtime])
        converted = scratch / FIFTYONE_APP_FILES[0]
        if not converted.is_file():
            raise SamkitError(f"onnxruntime's converter wrote no {converted.name}")
        shutil.move(str(converted), str(folder / converted.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return FIFTYONE_APP_FILES[0]


def fiftyone_app_description() -> dict:
    """model.json's note of how the folder serves the FiftyOne App."""
    return {
        "env": FIFTYONE_APP_ENV,
        "files": list(FIFTYONE_APP_FILES),
        "how": f"set {FIFTYONE_APP_ENV} to this folder (or a URL / bucket holding these two files) before "
        "launching the App",
    }
