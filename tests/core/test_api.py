"""The core API beyond parity: image conversion rules, caching, batching, masks utilities,
the Ultralytics-style facade, reduced precision."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

import samkit
from samkit import mask_utils
from samkit.predictor import ImageState
from samkit.utils.transforms import preprocess_shape, upscale_logits
from samkit.ultralytics_api import nest_prompts


# -- image conversion rules ---------------------------------------------------------------------
def test_grayscale_rgba_16bit_float_rules(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(samkit.load_image(gray), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.dstack([np.full((3, 4, 3), 7, np.uint8), np.zeros((3, 4), np.uint8)])
    assert np.array_equal(samkit.load_image(rgba), np.full((3, 4, 3), 7, np.uint8))
    sixteen = np.array([[0, 257, 65535]], dtype=np.uint16)
    assert samkit.load_image(sixteen)[0, :, 0].tolist() == [0, 1, 255]
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert samkit.load_image(unit)[0, :, 0].tolist() == [0, 128, 255]
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    assert samkit.load_image(path)[0, :, 1].tolist() == [0, 255]
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((2, 2), 99, np.uint8), np.zeros((2, 2), np.uint8)]), mode="LA").save(la)
    assert samkit.load_image(la).tolist() == np.full((2, 2, 3), 99).tolist()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert samkit.load_image(path).shape == (40, 20, 3)


# -- predictor ----------------------------------------------------------------------------------
def test_embedding_cache_skips_the_encoder(mobile_sam, images_dir):
    predictor = samkit.Predictor(mobile_sam, cache_size=2)
    predictor.set_image(images_dir / "dog.jpg")
    first = predictor.get_image_embedding()
    predictor.set_image(np.array(Image.open(images_dir / "dog.jpg").convert("RGB")))
    assert predictor.encoder_calls == 1
    assert predictor.get_image_embedding() is first
    predictor.set_image(images_dir / "groceries.jpg")
    predictor.set_image(images_dir / "picture1.jpg")  # evicts dog (bounded cache of 2)
    predictor.set_image(images_dir / "dog.jpg")
    assert predictor.encoder_calls == 4
    assert len(predictor.cache) == 2


def test_same_frozen_array_is_not_hashed_again(mobile_sam, images_dir, monkeypatch):
    predictor = samkit.Predictor(mobile_sam, cache_size=2)
    hashed = []
    image_key = predictor.image_key
    monkeypatch.setattr(predictor, "image_key", lambda image: hashed.append(1) or image_key(image))
    frozen = samkit.load_image(Image.open(images_dir / "dog.jpg"))  # np.asarray of PIL: read-only bytes
    assert not frozen.flags.writeable
    for _ in range(3):
        predictor.set_image(frozen)
    assert len(hashed) == 1 and predictor.encoder_calls == 1
    # a writable array may have changed between calls: hashed every time, and a change is seen
    writable = frozen.copy()
    predictor.set_image(writable)
    predictor.set_image(writable)
    assert len(hashed) == 3 and predictor.encoder_calls == 1  # same pixels: the cached embedding
    writable[:40] = 0
    predictor.set_image(writable)
    assert len(hashed) == 4 and predictor.encoder_calls == 2
    # read-only but over writable memory (a view someone else can write through): hashed
    view = writable.view()
    view.flags.writeable = False
    predictor.set_image(view)
    predictor.set_image(view)
    assert len(hashed) == 6
    # read-only but owning its memory: its owner may make it writable again, so it is hashed
    owned = frozen.copy()
    owned.flags.writeable = False
    predictor.set_image(owned)
    predictor.set_image(owned)
    assert len(hashed) == 8
    # after another image, the frozen one is looked up by its pixels again (and found cached)
    predictor.set_image(frozen)
    assert len(hashed) == 9 and predictor.encoder_calls == 2


def test_disk_cache_survives_a_new_predictor(mobile_sam, images_dir, tmp_path):
    first = samkit.Predictor(mobile_sam, cache_dir=tmp_path)
    first.set_image(images_dir / "dog.jpg")
    second = samkit.Predictor(mobile_sam, cache_dir=tmp_path)
    second.set_image(images_dir / "dog.jpg")
    assert second.encoder_calls == 0
    assert torch.equal(first.get_image_embedding(), second.get_image_embedding())


def test_disk_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    def state(value):
        return ImageState(torch.full((1, 256, 8, 8), float(value)), (10, 10), (10, 10))

    keys = [f"{i:040x}" for i in range(1, 5)]
    foreign = tmp_path / "notes.pt"
    foreign.write_bytes(b"x" * 100_000)  # not a cache file: never deleted
    probe = samkit.EmbeddingCache(1, tmp_path / "probe")
    probe.put(keys[0], state(0))
    size = (tmp_path / "probe" / f"{keys[0]}.pt").stat().st_size
    cache = samkit.EmbeddingCache(1, tmp_path, max_disk_bytes=int(2.5 * size))
    now = time.time()
    for age, key in zip((300, 200), keys[:2]):
        cache.put(key, state(age))
        os.utime(tmp_path / f"{key}.pt", (now - age, now - age))
    cache.put(keys[2], state(3))
    os.utime(tmp_path / f"{keys[2]}.pt", (now - 100, now - 100))
    assert sorted(p.name for p in tmp_path.glob("0*.pt")) == [f"{k}.pt" for k in keys[1:3]]
    # a disk hit makes keys[1] the most recent, so keys[2] goes next
    reopened = samkit.EmbeddingCache(1, tmp_path, max_disk_bytes=int(2.5 * size))
    assert reopened.get(keys[1], torch.device("cpu")) is not None
    reopened.put(keys[3], state(4))
    assert sorted(p.name for p in tmp_path.glob("0*.pt")) == [f"{keys[1]}.pt", f"{keys[3]}.pt"]
    assert foreign.is_file()


def test_predict_batch_equals_single_predictions(dog_predictor):
    boxes = np.array([[50, 40, 300, 400], [400, 100, 780, 500], [10, 10, 60, 60]], dtype=float)
    points = np.array([[[100, 200]], [[500, 300]], [[30, 30]]], dtype=float)
    labels = np.ones((3, 1), dtype=int)
    masks, scores, low_res = dog_predictor.predict_batch(points, labels, boxes, multimask_output=True)
    assert masks.shape == (3, 3, 534, 800) and scores.shape == (3, 3) and low_res.shape == (3, 3, 256, 256)
    for i in range(3):
        single_masks, single_scores, single_low = dog_predictor.predict(points[i], labels[i], boxes[i])
        np.testing.assert_allclose(low_res[i], single_low, atol=1e-4)
        np.testing.assert_allclose(scores[i], single_scores, atol=1e-5)
        assert (masks[i] != single_masks).mean() < 1e-4


def test_return_logits(dog_predictor):
    logits, _, _ = dog_predictor.predict(
        point_coords=np.array([[400, 260]]), point_labels=np.array([1]), return_logits=True
    )
    masks, _, _ = dog_predictor.predict(point_coords=np.array([[400, 260]]), point_labels=np.array([1]))
    assert logits.dtype == np.float32
    assert np.array_equal(logits > 0, masks)


@pytest.mark.parametrize("original_size", [(1200, 1800), (1800, 1200), (534, 800), (1024, 1024), (300, 200), (7, 2000)])
def test_upscale_logits_matches_sam_postprocessing(mobile_sam, original_size):
    """OpenCV's upscaling of the crop's low-res rows/columns against SAM's torch postprocessing
    (the official steps) of the whole low-res grid: landscape, portrait, square, downscaled and
    extreme shapes."""
    rng = np.random.default_rng(sum(original_size))
    low_res = (rng.standard_normal((256, 256)) * 5).astype(np.float32)
    input_size = preprocess_shape(*original_size, 1024)
    with torch.inference_mode():
        official = mobile_sam.postprocess_masks(
            torch.from_numpy(low_res)[None, None], input_size, original_size
        )[0, 0].numpy()
    ours = upscale_logits(low_res, input_size, original_size, 4)
    assert ours.shape == original_size and ours.dtype == np.float32
    # float32 rounding of source positions only: ~2e-5 of the range (a shifted row or column
    # would differ by the logits' own size, ~5)
    assert np.abs(ours - official).max() <= 1e-4 * np.abs(official).max()
    assert ((ours > 0) != (official > 0)).mean() < 1e-4
    out = np.empty(original_size, dtype=np.float32)
    assert upscale_logits(low_res, input_size, original_size, 4, out=out) is out
    assert np.array_equal(out, ours)


def test_logits_at_image_size_of_a_batch(dog_predictor):
    """Predictor.logits_at_image_size (what MaskGenerator upscales with) on a batch of the
    decoder's region-limited logits, against SAM's torch postprocessing of the full grid."""
    coords = torch.tensor([[[300.0, 300.0]], [[700.0, 150.0]], [[100.0, 500.0]]])
    labels = torch.ones(3, 1, dtype=torch.int)
    full, _ = dog_predictor.decode_low_res(coords, labels, multimask_output=False)
    part, _ = dog_predictor.decode_low_res(coords, labels, multimask_output=False, region=dog_predictor.mask_region())
    state = dog_predictor.image_state
    with torch.inference_mode():
        official = dog_predictor.model.postprocess_masks(full, state.input_size, state.original_size)[:, 0].numpy()
    ours = dog_predictor.logits_at_image_size(part[:, 0])
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    assert tuple(ours.shape) == (3, *state.original_size)
    ours = ours.numpy()
    for i in range(3):  # each mask from its own logits (a mix-up of prompts differs by whole masks)
        assert np.abs(ours[i] - official[i]).max() <= 1e-4 * np.abs(official[i]).max()
    assert ((ours > 0) != (official > 0)).mean() < 1e-4


def test_best_only_returns_the_highest_scoring_mask(dog_predictor):
    point, label = np.array([[400, 260]]), np.array([1])
    masks, scores, low_res = dog_predictor.predict(point_coords=point, point_labels=label)
    best, best_score, best_low = dog_predictor.predict(point_coords=point, point_labels=label, best_only=True)
    i = int(np.argmax(scores))
    assert best.shape == (1, *masks.shape[1:]) and best_score.shape == (1,) and best_low.shape == (1, 256, 256)
    assert np.array_equal(best[0], masks[i]) and best_score[0] == scores[i]
    # the decoder computes only that mask: the same values, summed in another order
    assert np.allclose(best_low[0], low_res[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("portrait", [False, True])
def test_without_low_res_only_the_image_area_is_decoded(mobile_sam, images_dir, portrait):
    """return_low_res=False upscales only the image tokens whose masks reach the image (rows of a
    landscape image, columns of a portrait one): the same masks, and no low-res logits."""
    image = samkit.load_image(images_dir / "dog.jpg")  # 800x534
    if portrait:
        image = np.ascontiguousarray(image.transpose(1, 0, 2))
    predictor = samkit.Predictor(mobile_sam)
    predictor.set_image(image)
    region = predictor.mask_region()
    # 534 / 800 * 1024 -> 684 input rows; upscaling reads low-res rows 0..172 (684 // 4 + 1), 4 per token
    assert region == ((64, 44) if portrait else (44, 64))

    coords = (
        torch.tensor([[[300.0, 200.0]], [[100.0, 600.0]]]).flip(-1)
        if portrait
        else torch.tensor([[[300.0, 200.0]], [[600.0, 100.0]]])
    )
    labels = torch.ones(2, 1, dtype=torch.int)
    full, full_scores = predictor.decode_low_res(coords, labels)
    part, part_scores = predictor.decode_low_res(coords, labels, region=region)
    assert part.shape == (2, 3, 4 * region[0], 4 * region[1])
    assert torch.allclose(part, full[..., : part.shape[2], : part.shape[3]], atol=1e-5, rtol=0)
    assert torch.equal(part_scores, full_scores)

    height, width = image.shape[:2]
    point, label = np.array([[width * 0.4, height * 0.6]]), np.array([1])
    for kwargs in ({}, {"best_only": True}, {"return_logits": True}, {"multimask_output": False}):
        masks, scores, low_res = predictor.predict(point, label, **kwargs)
        masks_only, scores_only, none = predictor.predict(point, label, return_low_res=False, **kwargs)
        assert none is None and low_res is not None
        assert np.array_equal(masks_only, masks) and np.array_equal(scores_only, scores), kwargs
    boxes = np.array([[10, 10, 300, 200], [100, 50, width - 5, height - 5]], dtype=float)
    masks, _, _ = predictor.predict_batch(boxes=boxes)
    masks_only, _, none = predictor.predict_batch(boxes=boxes, return_low_res=False)
    assert none is None and np.array_equal(masks_only, masks)


def test_image_area_decoding_under_bfloat16(mobile_sam_checkpoint, images_dir):
    """The direct (unfactored) upscaling path, taken under autocast, restricted the same way."""
    predictor = samkit.Predictor(samkit.load_model(mobile_sam_checkpoint, device="cpu", dtype=torch.bfloat16))
    predictor.set_image(images_dir / "dog.jpg")
    region = predictor.mask_region()
    coords, labels = torch.tensor([[[300.0, 200.0]], [[600.0, 100.0]]]), torch.ones(2, 1, dtype=torch.int)
    full, _ = predictor.decode_low_res(coords, labels)
    part, _ = predictor.decode_low_res(coords, labels, region=region)
    assert part.shape == (2, 3, 4 * region[0], 4 * region[1])
    top_left = full[..., : part.shape[2], : part.shape[3]]
    assert torch.allclose(part, top_left, atol=0.02 * float(top_left.abs().max()), rtol=0)


def test_bfloat16_path_agrees_with_float32(mobile_sam_checkpoint, images_dir):
    image = samkit.load_image(images_dir / "dog.jpg")
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = samkit.load_model(mobile_sam_checkpoint, device="cpu", dtype=dtype)
        predictor = samkit.Predictor(model)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(box=np.array([100, 50, 600, 500]), multimask_output=False)
        results[dtype] = (masks[0], scores[0], predictor.get_image_embedding())
    assert results["bfloat16"][2].dtype == torch.float32  # reduced precision stops at the network
    a, b = results["float32"][0], results["bfloat16"][0]
    iou = np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)
    assert iou >= 0.95


# -- mask utilities -----------------------------------------------------------------------------
def test_rle_round_trip_and_pycocotools_format():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = mask_utils.mask_to_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert np.array_equal(mask_utils.rle_to_mask(rle), mask)
    uncompressed = mask_utils.mask_to_uncompressed_rle(mask)
    assert sum(uncompressed["counts"]) == mask.size
    assert np.array_equal(mask_utils.rle_to_mask(uncompressed), mask)
    assert mask_utils.area(rle) == mask_utils.area(uncompressed) == int(mask.sum())
    from pycocotools import mask as coco

    assert np.array_equal(coco.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool), mask)


def test_boxes_and_polygons():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:20, 5:35] = True
    mask[30:45, 40:55] = True
    assert mask_utils.mask_to_box(mask) == [5, 10, 49, 34]
    assert mask_utils.mask_to_box(np.zeros((5, 5), bool)) == [0, 0, 0, 0]
    polygons = mask_utils.mask_to_polygons(mask)
    assert len(polygons) == 2
    xs = sorted((p[:, 0].min(), p[:, 0].max()) for p in polygons)
    assert xs == [(5, 34), (40, 54)]
    assert len(mask_utils.mask_to_polygons(mask, min_area=200)) == 1


def test_nms_matches_greedy_rule():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    scores = np.array([0.9, 0.95, 0.5, 0.1])
    assert mask_utils.nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert mask_utils.nms(boxes, scores, 0.99).tolist() == [1, 0, 2]


# -- segment everything -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["binary_mask", "coco_rle", "uncompressed_rle"])
def test_mask_generator_record_format(mobile_sam, dog_predictor, images_dir, mode):
    generator = samkit.MaskGenerator(
        mobile_sam,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_mode=mode,
        predictor=dog_predictor,
    )
    before = dog_predictor.current_state
    records = generator.generate(images_dir / "dog.jpg")
    assert dog_predictor.current_state is before, "a shared predictor keeps its image"
    assert records, "thresholds at 0 keep at least one mask"
    for record in records:
        assert set(record) == {
            "segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"
        }
        mask = record["segmentation"] if mode == "binary_mask" else mask_utils.rle_to_mask(record["segmentation"])
        assert mask.shape == (534, 800)
        assert record["area"] == int(mask.sum())
        assert record["bbox"] == mask_utils.mask_to_box(mask)
        assert record["crop_box"] == [0, 0, 800, 534]


# -- Ultralytics-style facade -------------------------------------------------------------------
def test_prompt_nesting_rules():
    pts, lbl, box = nest_prompts(None, [900, 370], [1])
    assert pts.shape == (1, 1, 2) and lbl.tolist() == [[1]] and box is None
    pts, lbl, _ = nest_prompts(None, [[400, 370], [900, 370]], [1, 1])
    assert pts.shape == (2, 1, 2) and lbl.shape == (2, 1)  # two objects, one point each
    pts, lbl, _ = nest_prompts(None, [[[400, 370], [900, 370]]], [[1, 0]])
    assert pts.shape == (1, 2, 2) and lbl.tolist() == [[1, 0]]  # one object, two points
    _, _, box = nest_prompts([[1, 2, 3, 4], [5, 6, 7, 8]], None, None)
    assert box.shape == (2, 4)
    with pytest.raises(samkit.PromptError, match="one label per point"):
        nest_prompts(None, [[1, 2], [3, 4]], [1])


def test_sam_facade_prompts_and_everything(mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    model = samkit.SAM(
        str(mobile_sam_checkpoint), device="cpu", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    info = model.info()
    assert info["parameters"] == 9_808_452 and "mobile_sam" in capsys.readouterr().out
    image = images_dir / "dog.jpg"
    boxes = model(image, bboxes=[[50, 40, 300, 400], [400, 100, 780, 500]])[0]
    assert boxes.masks.shape == (2, 534, 800) and boxes.scores.shape == (2,) and boxes.boxes.shape == (2, 4)
    points = model(image, points=[[[100, 200], [500, 300]]], labels=[[1, 0]])[0]
    assert points.masks.shape == (1, 534, 800)
    everything = model(image)[0]
    assert len(everything) >= 1
    overlay = tmp_path / "overlay.png"
    boxes.save(overlay)
    assert Image.open(overlay).size == (800, 534)
    assert len(boxes.save_masks(tmp_path / "masks")) == 2
    coco = boxes.to_coco()
    assert np.array_equal(mask_utils.rle_to_mask(coco[0]["segmentation"]), boxes.masks[0])


def test_import_and_cli_do_not_load_torch():
    """`import samkit` and building the CLI stay light: torch loads only when a model is needed."""
    import subprocess
    import sys

    code = "import sys, samkit, samkit.cli; samkit.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
