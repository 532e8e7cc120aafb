"""The prompt logic every adapter shares (samkit.prompts, the tight box of samkit.mask_utils):
one mask per object with the best-mask policy, stability scores, tight boxes, best-first order."""

from __future__ import annotations

import numpy as np
import pytest

import samkit
from samkit import ObjectMask, Prompt, best_first, segment_objects
from samkit.utils.mask_utils import MaskBox, crop_to_box, tight_box


def _reference_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return MaskBox(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def test_tight_box_and_crop_against_the_pixels():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        mask = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        mask[y0 : rng.integers(y0, h) + 1, x0 : rng.integers(x0, w) + 1] = rng.random() < 0.9
        mask &= rng.random((h, w)) < 0.7
        assert tight_box(mask) == _reference_box(mask)
        found = crop_to_box(mask)
        if found is None:
            assert not mask.any()
            continue
        box, crop = found
        assert crop.shape == (box.height, box.width) and crop.flags.c_contiguous and crop.dtype == bool
        assert crop.sum() == mask.sum() and crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    edge = np.zeros((5, 7), bool)
    edge[4, 6] = edge[0, 0] = True
    assert tight_box(edge) == (0, 0, 7, 5) and tight_box(np.zeros((3, 3), bool)) is None


def test_best_first_orders_by_predicted_iou_and_caps():
    records = [{"predicted_iou": s, "n": i} for i, s in enumerate([0.5, 0.9, 0.7, 0.9, 0.1])]
    assert [r["n"] for r in best_first(records)] == [1, 3, 2, 0, 4]  # ties keep their order
    assert [r["n"] for r in best_first(records, 2)] == [1, 3]
    assert len(best_first(records, 0)) == len(best_first(records, None)) == 5
    assert best_first([], 3) == []


def test_prompt_needs_points_or_a_box():
    with pytest.raises(samkit.PromptError, match="points or a box"):
        Prompt()
    with pytest.raises(samkit.PromptError, match="labels without points"):
        Prompt(labels=[1], box=[0, 0, 5, 5])
    assert Prompt(points=[[1, 2]]).labels.tolist() == [1] and Prompt(points=[[1, 2]]).ambiguous
    assert not Prompt(points=[[1, 2]], box=[0, 0, 4, 4]).ambiguous and not Prompt(points=[[1, 2], [3, 4]]).ambiguous
    assert Prompt(points=np.zeros((0, 2)), labels=np.zeros(0), box=[0, 0, 4, 4]).points is None


class OfficialCall:
    """A predictor with only the official SamPredictor.predict call (no best_only, no batches)."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.model = predictor.model
        self.calls = []

    def set_image(self, image):
        self.predictor.set_image(image)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):
        self.calls.append(multimask_output)
        return self.predictor.predict(point_coords, point_labels, box, mask_input, multimask_output, return_logits)


def test_segment_objects_is_the_best_of_the_predictors_masks(dog_predictor):
    prompts = [Prompt(points=[[300, 250]]), Prompt(box=[50, 40, 300, 400]), Prompt(points=[[300, 250], [100, 100]],
               labels=[1, 0]), Prompt(box=[400, 100, 780, 500]), Prompt(points=[[500, 300]], box=[400, 100, 780, 500])]
    found = segment_objects(dog_predictor, prompts, stability=False)
    assert len(found) == len(prompts) and all(isinstance(o, ObjectMask) for o in found)
    for prompt, obj in zip(prompts, found):
        masks, scores, _ = dog_predictor.predict(prompt.points, prompt.labels, prompt.box,
                                                 multimask_output=prompt.ambiguous)
        best = int(np.argmax(scores))
        assert len(scores) == (3 if prompt.ambiguous else 1)
        assert np.array_equal(obj.mask, masks[best]) and obj.score == pytest.approx(float(scores[best]), abs=1e-6)
        assert obj.stability_score is None and obj.box == _reference_box(masks[best])
        assert obj.area == int(masks[best].sum())
    # the boxes were decoded together, and as predict_batch decodes them
    batch, batch_scores, _ = dog_predictor.predict_batch(boxes=np.array([[50, 40, 300, 400], [400, 100, 780, 500]]))
    assert np.array_equal(found[1].mask, batch[0, 0]) and np.array_equal(found[3].mask, batch[1, 0])
    # a predictor with only the official call gives the same objects, with the same policy
    official = OfficialCall(dog_predictor)
    again = segment_objects(official, prompts, stability=False)
    assert official.calls == [True, False, False, False, False]
    for a, b in zip(found, again):
        assert np.array_equal(a.mask, b.mask) and a.score == pytest.approx(b.score, abs=1e-6)


def test_multimask_can_be_forced(dog_predictor):
    box = Prompt(box=[50, 40, 300, 400])
    [three] = segment_objects(dog_predictor, [box], multimask=True, stability=False)
    masks, scores, _ = dog_predictor.predict(box=box.box, multimask_output=True)
    assert np.array_equal(three.mask, masks[int(np.argmax(scores))])
    point = Prompt(points=[[300, 250]])
    [one] = segment_objects(dog_predictor, [point], multimask=False, stability=False)
    masks, scores, _ = dog_predictor.predict(point.points, point.labels, multimask_output=False)
    assert np.array_equal(one.mask, masks[0]) and one.score == pytest.approx(float(scores[0]), abs=1e-6)


def _stability(logits: np.ndarray, offset: float) -> float:
    return float((logits > offset).sum() / (logits > -offset).sum())


def test_stability_score_is_the_official_one_from_the_logits(dog_predictor, images_dir):
    """IoU of the mask thresholded at +offset and -offset logits. The seeded random weights give
    logits within ~0.5 of 0, so an offset of 0.1 makes the scores tell masks apart."""
    boxes = [[10 + 30 * k, 20 + 10 * k, 300 + 40 * k, 330] for k in range(10)]  # more than one LOGITS_CHUNK
    prompts = [Prompt(points=[[300, 250]]), *[Prompt(box=b) for b in boxes]]
    found = segment_objects(dog_predictor, prompts, images_dir / "dog.jpg", stability_offset=0.1, batch_size=4)
    values = []
    for prompt, obj in zip(prompts, found):
        logits, scores, _ = dog_predictor.predict(prompt.points, prompt.labels, prompt.box,
                                                  multimask_output=prompt.ambiguous, return_logits=True)
        best = int(np.argmax(scores))
        assert np.array_equal(obj.mask, logits[best] > 0)
        # (boxes decode in batches: logits agree to float32 rounding, a few pixels of ~1e6 may move)
        assert obj.stability_score == pytest.approx(_stability(logits[best], 0.1), abs=5e-5)
        values.append(obj.stability_score)
    assert len(set(np.round(values, 4))) > 3 and all(0 < v <= 1 for v in values)
    # with the official offset of 1 the random logits give 0: nothing reaches +1
    [obj] = segment_objects(dog_predictor, prompts[:1])
    assert obj.stability_score == 0.0


def test_an_empty_mask_has_no_box(dog_predictor):
    class Nothing:
        model = dog_predictor.model

        def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True,
                    return_logits=False):
            n = 3 if multimask_output else 1
            return np.full((n, 20, 30), -10.0, np.float32), np.linspace(0.9, 0.7, n), np.zeros((n, 256, 256))

    [obj] = segment_objects(Nothing(), [Prompt(points=[[3, 4]])])
    assert obj.empty and obj.box is None and obj.crop() is None and obj.area == 0 and obj.stability_score == 0.0
    assert obj.score == pytest.approx(0.9)


def test_crop_is_the_mask_inside_its_box(dog_predictor):
    [obj] = segment_objects(dog_predictor, [Prompt(box=[50, 40, 300, 400])], stability=False)
    box = obj.box
    crop = obj.crop()
    assert crop.shape == (box.height, box.width) and crop.sum() == obj.area
    assert np.array_equal(obj.mask[box.y0 : box.y1, box.x0 : box.x1], crop)
