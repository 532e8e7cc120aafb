"""The oracle side of the core parity tests and the benchmark.

* ``official()``: the official ``segment_anything`` package, imported with a small stand-in for
  the four torchvision functions it touches when torchvision is not importable (CPU-only torch).
  The stand-in is removed from ``sys.modules`` right after the import, so nothing else in the test
  session can mistake it for a real torchvision.
* ``perturb_(module, seed)``: moves every floating tensor of a state_dict away from its initial
  value (norm weights and biases, attention rel-pos tables, positional embeddings, every bias), as
  the MobileSAM reference fixture did, so that no part of a network can be wrong unnoticed.
* ``random_prompts(kind, batch, seed)``: seeded prompts in the 1024-px input frame for the decoder
  tests (points, a box, a mask input, or any mix named in `kind`).
* ``official_vit_b()``: an official ViT-B with seeded perturbed weights, its state_dict saved in
  the official checkpoint format (cached for the whole process).
* ``StandInImageEncoder`` / ``StandInPromptEncoder`` / ``StandInMaskDecoder`` and
  ``install_stand_ins(model)``: a cheap, deterministic stand-in for the network, used by the
  segment-everything parity test. Random weights make the generator's output degenerate (every
  mask covers most of the image); the stand-in draws disks and boxes of varying size, slope (so
  stability scores vary), holes and islands around each prompt point, with IoU predictions that
  vary by point and by multimask slot, so that hundreds of distinct masks go through thresholds,
  NMS, crops, upscaling, hole/island removal and RLE in both generators.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# torchvision stand-in (only the four functions segment_anything 1.0 imports)
# ---------------------------------------------------------------------------------------------


def _to_pil_image(pic):
    from PIL import Image

    if isinstance(pic, torch.Tensor):
        pic = pic.detach().cpu().numpy()
        if pic.ndim == 3 and pic.shape[0] in (1, 3, 4):
            pic = np.transpose(pic, (1, 2, 0))
    pic = np.asarray(pic)
    if pic.ndim == 3 and pic.shape[2] == 1:
        pic = pic[:, :, 0]
    if pic.dtype != np.uint8:
        raise TypeError(f"stand-in to_pil_image handles uint8 arrays only, got {pic.dtype}")
    return Image.fromarray(pic)


def _resize(img, size, interpolation=None, max_size=None, antialias=True):
    """torchvision.transforms.functional.resize for a PIL image: PIL bilinear, size = (h, w)."""
    from PIL import Image

    if not isinstance(img, Image.Image):
        raise TypeError("stand-in resize handles PIL images only (what segment_anything passes)")
    if isinstance(size, int):
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = int(size[0]), int(size[1])
    return img.resize((new_w, new_h), Image.BILINEAR)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's CPU NMS: stable descending sort by score, suppress IoU > threshold."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    b = boxes.detach().cpu()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores.detach().cpu(), stable=True, descending=True)[1]
    # Pairwise IoU in the boxes' own dtype, as the C++ kernel computes it.
    xx1 = torch.maximum(x1[:, None], x1[None, :])
    yy1 = torch.maximum(y1[:, None], y1[None, :])
    xx2 = torch.minimum(x2[:, None], x2[None, :])
    yy2 = torch.minimum(y2[:, None], y2[None, :])
    zero = torch.zeros((), dtype=b.dtype)
    inter = torch.maximum(zero, xx2 - xx1) * torch.maximum(zero, yy2 - yy1)
    over = (inter / (areas[:, None] + areas[None, :] - inter)) > iou_threshold
    over = over.numpy()
    order_np = order.numpy()
    suppressed = np.zeros(len(order_np), dtype=bool)
    keep = []
    for i in order_np:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return torch.as_tensor(np.array(keep, dtype=np.int64))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms via the coordinate-offset trick (same kept set)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _torchvision_stub() -> dict[str, types.ModuleType]:
    tv = types.ModuleType("torchvision")
    tv.__samkit_stand_in__ = True
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = _resize
    functional.to_pil_image = _to_pil_image
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    for mod in (ops, boxes):
        mod.batched_nms = batched_nms
        mod.box_area = box_area
        mod.nms = nms
    tv.transforms, transforms.functional, tv.ops, ops.boxes = transforms, functional, ops, boxes
    return {
        "torchvision": tv,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "torchvision.ops": ops,
        "torchvision.ops.boxes": boxes,
    }


@functools.lru_cache(maxsize=None)
def official() -> types.ModuleType:
    """Import ``segment_anything``; with a torchvision stand-in where torchvision cannot import."""
    try:
        import torchvision  # noqa: F401

        return importlib.import_module("segment_anything")
    except Exception:  # not installed, or a build that does not match the installed torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    stub = _torchvision_stub()
    sys.modules.update(stub)
    try:
        sam = importlib.import_module("segment_anything")
        importlib.import_module("segment_anything.automatic_mask_generator")
    finally:
        for name in stub:
            if sys.modules.get(name) is stub[name]:
                del sys.modules[name]
    return sam


def uses_torchvision_stand_in() -> bool:
    amg = importlib.import_module("segment_anything.automatic_mask_generator")
    return amg.batched_nms is batched_nms


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def perturb_(module: nn.Module, seed: int) -> nn.Module:
    """Move every floating tensor of ``module.state_dict()`` away from its initial value.

    Constant tensors (norm weights 1, biases 0, zero-initialised rel-pos tables and positional
    embeddings) get noise of a fixed scale around their value; random ones get noise relative to
    their spread. Deterministic in ``seed`` and in the order of the state_dict.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict(keep_vars=True).items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)
        flat = t.detach().flatten().float()
        spread = float(flat.std()) if flat.numel() > 1 else 0.0
        if name.endswith("positional_encoding_gaussian_matrix"):
            t.mul_(1.0 + 0.1 * noise)  # keep the Fourier features' frequency scale
        elif spread < 1e-6:  # constant: ones (norm weights), zeros (biases, rel-pos, pos_embed)
            const = float(flat[0]) if flat.numel() else 0.0
            scale = 0.1 if abs(const - 1.0) < 1e-6 else (0.05 if "rel_pos" in name else 0.02)
            t.add_(scale * noise)
        else:
            t.add_(0.1 * spread * noise)
    return module


def random_prompts(kind: str, batch: int, seed: int):
    """(coords (B, 2, 2), labels (B, 2) int, boxes (B, 4) XYXY, mask_input (B, 1, 256, 256)) in the
    1024-px input frame, each only where `kind` names it ("points", "box", "mask", e.g.
    "points+box+mask"), else None; seeded."""
    gen = torch.Generator().manual_seed(seed)
    coords = labels = boxes = mask_input = None
    if "points" in kind:
        coords = torch.rand(batch, 2, 2, generator=gen) * 1000
        labels = torch.randint(0, 2, (batch, 2), generator=gen).int()
    if "box" in kind:
        corner = torch.rand(batch, 2, generator=gen) * 600
        boxes = torch.cat([corner, corner + 100 + torch.rand(batch, 2, generator=gen) * 300], dim=1)
    if "mask" in kind:
        mask_input = torch.randn(batch, 1, 256, 256, generator=gen) * 3
    return coords, labels, boxes, mask_input


def unperturbed_keys(before: dict, after: dict, min_changed: float = 0.99) -> list[str]:
    """Keys of floating tensors of which fewer than ``min_changed`` of the elements moved (a few
    elements of a large random tensor can round back to their value; a whole one must not)."""
    same = []
    for k, v in before.items():
        if v.is_floating_point() and float((after[k] != v).float().mean()) < min_changed:
            same.append(k)
    return same


_TMP = None


def _tmpdir() -> Path:
    global _TMP
    if _TMP is None:
        _TMP = Path(tempfile.mkdtemp(prefix="samkit-oracle-"))
        atexit.register(shutil.rmtree, _TMP, True)
    return _TMP


VIT_B_SEED = 20240521
LOGIT_GAIN = 20.0


@functools.lru_cache(maxsize=None)
def official_vit_b(seed: int = VIT_B_SEED):
    """(official Sam ViT-B with perturbed weights in eval mode, path of its saved state_dict)."""
    sam = official()
    torch.manual_seed(seed)
    model = sam.sam_model_registry["vit_b"]()
    perturb_(model, seed + 1)
    # Random weights give low-res logits of std ~0.1, where a 1e-5 numerical difference flips a
    # visible share of pixels at the 0 threshold; scale the hypernetwork outputs so that the
    # logits have a unit-like spread, as a trained model's do.
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(LOGIT_GAIN)
    model.eval()
    path = _tmpdir() / f"sam_vit_b_perturbed_{seed}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def official_with_encoder(image_encoder: nn.Module, state_dict: dict):
    """An official ``Sam`` whose prompt encoder and mask decoder are the official modules loaded
    from ``state_dict`` and whose image encoder is ``image_encoder`` (e.g. our TinyViT, since the
    official package has none). Lets the official generator run on MobileSAM weights."""
    sam = official()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    model = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    )
    del sam
    sub = {k: v for k, v in state_dict.items() if not k.startswith("image_encoder.")}
    missing, unexpected = model.load_state_dict(sub, strict=False)
    missing = [k for k in missing if not k.startswith("image_encoder.")]
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# deterministic stand-in for the network (segment-everything parity)
# ---------------------------------------------------------------------------------------------

LOW = 256  # low-res mask side
EMB = 64  # image embedding side


class StandInImageEncoder(nn.Module):
    """Cheap image encoder: the preprocessed image average-pooled to 64x64, spread over 256
    channels. The embedding depends on the (cropped, resized, normalised, padded) input, so the
    stand-in decoder's masks depend on the pixels each crop really contains."""

    img_size = 1024

    def __init__(self):
        super().__init__()
        self.register_buffer("mix", torch.linspace(-1.0, 1.0, 256 * 3).view(256, 3))
        self.gain = nn.Parameter(torch.ones(()))  # a parameter, for code that asks a module's dtype
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pooled = F.avg_pool2d(x.float(), kernel_size=16)  # (B, 3, 64, 64)
        emb = torch.einsum("oc,bchw->bohw", self.mix, pooled) * self.gain.float()
        return emb.to(x.dtype)


class StandInPromptEncoder(nn.Module):
    """Passes the prompt through: sparse "embedding" (B, N, 3) = (x, y, label) in the 1024 input
    frame; boxes become two corner points with labels 2 and 3 (as the official encoder labels
    them); a mask prompt is ignored. No padding point is added."""

    embed_dim = 256
    image_embedding_size = (EMB, EMB)
    input_image_size = (1024, 1024)
    mask_input_size = (LOW, LOW)

    def __init__(self):
        super().__init__()
        self.register_buffer("_pe", torch.zeros(1, 256, EMB, EMB))

    def get_dense_pe(self) -> torch.Tensor:
        return self._pe

    def forward(self, points=None, boxes=None, masks=None):
        parts = []
        if points is not None:
            coords, labels = points
            parts.append(torch.cat([coords.float(), labels.float()[..., None]], dim=-1))
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2).float()
            lab = torch.tensor([2.0, 3.0], device=corners.device).expand(corners.shape[0], 2)
            parts.append(torch.cat([corners, lab[..., None]], dim=-1))
        if not parts:  # no prompt (the predictor preparing the decoder for an image)
            parts.append(torch.zeros(1, 0, 3, device=self._pe.device))
        sparse = torch.cat(parts, dim=1)
        bs = sparse.shape[0]
        dense = self._pe.expand(bs, -1, -1, -1)
        return sparse, dense


def _smooth(x: torch.Tensor, y: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """A smooth value in [0, 1] that varies slowly with the point (robust to float32 vs float64
    coordinates: a 1e-4 change in a coordinate changes it by < 1e-5)."""
    return 0.5 + 0.5 * torch.sin(x / a + y / b + c)


class StandInMaskDecoder(nn.Module):
    """For each prompt (its first point, or the box centre) draws into the 256x256 low-res logits
    a disk or a box (chosen by position), with a size per multimask slot, a slope that varies
    by point (so stability scores spread over [~0.6, 1]), for some points a hole in the middle and
    an island beside it (for hole/island removal), plus a small image-dependent term read from
    the image embedding. IoU predictions depend smoothly on the point and the slot."""

    def __init__(self):
        super().__init__()
        g = torch.arange(LOW, dtype=torch.float32) + 0.5
        self.register_buffer("gy", g.view(1, LOW, 1), persistent=False)
        self.register_buffer("gx", g.view(1, 1, LOW), persistent=False)
        self.calls = 0
        self.prompts = 0

    def prepare_image(self, image_embeddings, image_pe, dense):
        """Nothing of the image is shared between prompts here (the predictor calls this when an
        image is set)."""

    def _slot(self, x, y, slot: int):
        """Logits (B, 256, 256) and IoU prediction (B,) for points (B,) in the 1024 frame."""
        n = x.shape[0]
        cx, cy = (x / 4.0).view(-1, 1, 1), (y / 4.0).view(-1, 1, 1)  # low-res frame
        mult = (0.55, 1.0, 1.7, 1.25)[slot]
        r = ((3.0 + 20.0 * _smooth(x, y, 97.0, 61.0, 0.3)) * mult).view(-1, 1, 1)
        aspect = (0.6 + 0.8 * _smooth(x, y, 53.0, 131.0, 1.1 + slot)).view(-1, 1, 1)
        slope = (0.15 + 8.0 * _smooth(x, y, 71.0, 89.0, 2.0 + 0.7 * slot)).view(-1, 1, 1)
        dx = self.gx - cx  # (B, 1, 256)
        dy = self.gy - cy  # (B, 256, 1)
        ax, ay = (dx * aspect), (dy / aspect)
        logits = torch.empty((n, LOW, LOW), dtype=torch.float32, device=x.device)
        is_disk = torch.sin(x / 211.0 + y / 157.0 + slot) > 0
        d = torch.nonzero(is_disk).flatten()
        b = torch.nonzero(~is_disk).flatten()
        if len(d):
            logits[d] = torch.sqrt(ax[d] ** 2 + ay[d] ** 2)
        if len(b):
            logits[b] = torch.maximum(ax[b].abs(), ay[b].abs())
        logits = slope * (r - logits)
        # a hole in the middle and an island to the right, for some points and slots
        holey = torch.sin(x / 43.0 - y / 37.0 + 0.9 * slot) > 0.2
        hole_r = (0.8 + 2.0 * _smooth(x, y, 29.0, 47.0, 0.5 + slot)).view(-1, 1, 1)
        h = torch.nonzero(holey & (r.flatten() > 2.5 * hole_r.flatten())).flatten()
        if len(h):
            dist_c = torch.sqrt(dx[h] ** 2 + dy[h] ** 2)
            logits[h] = torch.minimum(logits[h], (dist_c - hole_r[h]) * 8.0)
        i = torch.nonzero(holey).flatten()
        if len(i):
            isl_d = torch.sqrt((dx[i] - (r[i] + 3.0 + hole_r[i])) ** 2 + dy[i] ** 2)
            logits[i] = torch.maximum(logits[i], (hole_r[i] - isl_d) * 4.0)
        iou = 0.70 + 0.30 * _smooth(x, y, 23.7, 41.3, 1.7 * slot)
        return logits.clamp_(-30.0, 30.0), iou

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
    ):
        self.calls += 1
        sp = sparse_prompt_embeddings.float()
        bs = sp.shape[0]
        self.prompts += bs
        # the prompt point: first point with a non-negative label; boxes: centre of the corners
        pts = sp[:, :, :2]
        labels = sp[:, :, 2]
        is_box = (labels == 2) | (labels == 3)
        if bool(is_box.any()):
            w = is_box.float()
        else:
            first = (labels >= 0).float()
            w = first * (torch.cumsum(first, dim=1) == 1).float()
        xy = (pts * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
        x, y = xy[:, 0].double(), xy[:, 1].double()
        slots = (0, 1, 2) if multimask_output else (3,)
        outs, ious = [], []
        for s in slots:
            lg, iou = self._slot(x.float(), y.float(), s)
            outs.append(lg)
            ious.append(iou)
        logits = torch.stack(outs, dim=1)  # (B, C, 256, 256)
        emb = image_embeddings.float()[:, :1]  # (1 or B, 1, 64, 64)
        term = F.interpolate(emb, size=(LOW, LOW), mode="bilinear", align_corners=False)
        logits = logits + 0.5 * torch.tanh(term)
        out_dtype = image_embeddings.dtype
        iou = torch.stack(ious, dim=1)
        if best_only:  # samkit's decoder option: per prompt only the mask with the highest IoU
            best = iou.argmax(dim=1, keepdim=True)
            logits, iou = logits[torch.arange(bs)[:, None], best], iou.gather(1, best)
        if region is not None:  # samkit's decoder option: the masks of the top-left tokens only
            per_token = LOW // EMB
            logits = logits[..., : region[0] * per_token, : region[1] * per_token]
        return logits.to(out_dtype), iou.to(out_dtype)


def install_stand_ins(model: nn.Module) -> nn.Module:
    """Replace ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` of an official or a
    samkit ``Sam`` with fresh stand-ins (in place; returns the model)."""
    model.image_encoder = StandInImageEncoder()
    model.prompt_encoder = StandInPromptEncoder()
    model.mask_decoder = StandInMaskDecoder()
    return model.eval()


# ---------------------------------------------------------------------------------------------
# comparing masks and generator records
# ---------------------------------------------------------------------------------------------


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def decode_segmentation(seg, output_mode: str) -> np.ndarray:
    """A record's ``segmentation`` as an HxW bool array, for any output mode."""
    if output_mode == "binary_mask":
        return np.asarray(seg, dtype=bool)
    if output_mode == "coco_rle":
        from pycocotools import mask as mask_utils

        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
        return mask_utils.decode(rle).astype(bool)
    if output_mode == "uncompressed_rle":
        h, w = seg["size"]
        flat = np.empty(h * w, dtype=bool)
        idx, parity = 0, False
        for count in seg["counts"]:
            flat[idx : idx + count] = parity
            idx += count
            parity = not parity
        assert idx == h * w, f"uncompressed RLE counts sum to {idx}, size is {h}x{w}"
        return flat.reshape(w, h).transpose()  # column-major, as COCO
    raise ValueError(output_mode)


def match_records(ours: list, theirs: list, output_mode: str, min_iou: float = 0.99):
    """Pair every official record with one of ours: same point (within 1e-3 px) and the closest
    predicted IoU, then the best mask IoU among those; unmatched ones are reported.

    Returns (pairs, problems): pairs of (our_record, their_record, mask_iou, our_mask, their_mask)
    and a list of human-readable problems (empty when the outputs agree).
    """
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"record count: ours {len(ours)}, official {len(theirs)}")
    our_pts = np.array([r["point_coords"][0] for r in ours], dtype=np.float64).reshape(-1, 2)
    our_iou = np.array([r["predicted_iou"] for r in ours], dtype=np.float64)
    used = np.zeros(len(ours), dtype=bool)
    cache: dict[int, np.ndarray] = {}

    def ours_mask(i):
        if i not in cache:
            cache[i] = decode_segmentation(ours[i]["segmentation"], output_mode)
        return cache[i]

    pairs = []
    for j, t in enumerate(theirs):
        tm = decode_segmentation(t["segmentation"], output_mode)
        tp = np.asarray(t["point_coords"][0], dtype=np.float64)
        cand = np.nonzero(
            (~used)
            & (np.abs(our_pts - tp).max(axis=1) < 1e-3)
            & (np.abs(our_iou - t["predicted_iou"]) < 1e-4)
        )[0]
        best, best_iou = None, -1.0
        for i in cand:
            v = mask_iou(ours_mask(i), tm)
            if v > best_iou:
                best, best_iou = i, v
        if best is None or best_iou < min_iou:
            problems.append(
                f"official record {j} (point {tp.tolist()}, predicted_iou "
                f"{t['predicted_iou']:.6f}, area {t['area']}): no match in ours "
                f"(best mask IoU {best_iou:.4f} among {len(cand)} candidates)"
            )
            continue
        used[best] = True
        pairs.append((ours[best], t, best_iou, ours_mask(best), tm))
    return pairs, problems
