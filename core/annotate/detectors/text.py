"""Open-vocabulary detectors from transformers: boxes for the words of a text prompt.

`text="building. tree."` names the classes (phrases separated by '.'; or a list of phrases);
class ids are the phrases' positions. Models: GroundingDINO
(`IDEA-Research/grounding-dino-tiny`, `-base`) and OWLv2 (`google/owlv2-base-patch16-ensemble`
and the other OWLv2 checkpoints), by Hugging Face id or a local folder saved with
`save_pretrained`. Their PIL image processors are used: transformers picks the torchvision one
whenever torchvision is installed, even when it does not work.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..records import AnnotateError, Detections, ImageInfo
from .base import DetectOptions, Detector, class_aware_nms

GROUNDING_DINO = "grounding-dino"
OWLV2 = "owlv2"
DEFAULT_TEXT_MODEL = "IDEA-Research/grounding-dino-tiny"


def parse_text(text: str | Sequence[str]) -> list[str]:
    """'building. tree.' or ['building', 'tree'] -> ['building', 'tree'] (stripped, lower case, no
    empty or repeated phrases)."""
    phrases = text.split(".") if isinstance(text, str) else [str(t) for t in text]
    out: list[str] = []
    for phrase in phrases:
        phrase = " ".join(phrase.strip().lower().split())
        if phrase and phrase not in out:
            out.append(phrase)
    if not out:
        raise AnnotateError(f"text {text!r} names no class: give phrases separated by '.', like 'building. tree.'")
    return out


def text_model_family(det_model: str) -> str | None:
    """GROUNDING_DINO, OWLV2 or None for a local folder (its config.json's model_type) or a hub id
    (by name)."""
    path = Path(det_model).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            return None
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        except (OSError, ValueError):
            return None
        return {"grounding-dino": GROUNDING_DINO, "owlv2": OWLV2}.get(model_type)
    name = det_model.lower()
    if "grounding-dino" in name or "grounding_dino" in name or "groundingdino" in name:
        return GROUNDING_DINO
    if "owlv2" in name:
        return OWLV2
    return None


def is_path(det_model: str) -> bool:
    """Whether det_model is written as a path (./, ../, /, ~), which a Hugging Face id never is."""
    return det_model.startswith((".", "/", "~"))


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within a few seconds (a proxy in the
    environment counts as reachable: the download then goes through it); remembered for a minute,
    as for checkpoint downloads."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from ...build import host_reachable

    return host_reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co", timeout=3.0)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _needs_transformers(model_id: str) -> str:
    return f"the text detector {model_id} needs transformers: pip install 'samkit[text]'"


def _cannot_download(model_id: str, offline: bool) -> str:
    """What loading an id that is not in the Hugging Face cache ends with when the Hub cannot be
    used: where to get the folder and how to pass it."""
    folder = model_id.rstrip("/").split("/")[-1]
    return (
        f"cannot load the text detector {model_id}: it is not in the Hugging Face cache and the Hub "
        f"{'is switched off (HF_HUB_OFFLINE)' if offline else 'cannot be reached (offline?)'}; download it "
        f"where there is network (hf download {model_id} --local-dir {folder}), copy the folder here and "
        f"pass its path as the detector: --det-model path/to/{folder}"
    )


def _not_a_text_model(det_model: str) -> str:
    return f"{det_model} is not a GroundingDINO or OWLv2 model (text detectors samkit runs)"


def from_pretrained(loader, model_id: str, **kwargs):
    """loader.from_pretrained(model_id) from a local folder, the local cache, or the Hub; offline
    and not cached: one line naming the id and how to use a local folder (instead of transformers'
    retries and traceback)."""
    if Path(model_id).expanduser().is_dir():
        return loader.from_pretrained(str(Path(model_id).expanduser()), **kwargs)
    try:
        return loader.from_pretrained(model_id, local_files_only=True, **kwargs)
    except OSError:
        pass  # not in the cache: download it, if the Hub can be reached
    offline = _hub_offline()
    if offline or not _hub_reachable():
        raise AnnotateError(_cannot_download(model_id, offline))
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except OSError as exc:
        raise AnnotateError(f"cannot load the text detector {model_id}: {str(exc).splitlines()[0]}") from None


def text_detector_problem(det_model: str | os.PathLike | None) -> str | None:
    """Why load_detector(det_model, text) could not load its text detector here, found without
    loading anything (for a form's validation, before a run starts; the network is asked at most
    once a minute): transformers not importable, a folder that does not exist or holds no
    GroundingDINO / OWLv2 model, a name of neither, or a Hugging Face id that is not in the cache
    while the Hub is switched off or cannot be reached. None when loading can be tried; else the
    one-line message loading would end with. det_model None: the default text detector."""
    model_id = str(det_model) if det_model else DEFAULT_TEXT_MODEL
    if importlib.util.find_spec("transformers") is None:  # not imported: a form stays fast
        return _needs_transformers(model_id)
    path = Path(model_id).expanduser()
    if path.is_dir():
        return None if text_model_family(model_id) is not None else _not_a_text_model(model_id)
    if is_path(model_id):  # as load_detector tells paths and ids apart
        return f"detector not found: {path}"
    if text_model_family(model_id) is None:
        return _not_a_text_model(model_id)
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            return None
    except ValueError:  # not a valid repo id: loading it can only fail
        return _not_a_text_model(model_id)
    offline = _hub_offline()
    if offline or not _hub_reachable():
        return _cannot_download(model_id, offline)
    return None


class TextDetector(Detector):
    """Shared by both families: the phrases, the lazily loaded model and processor."""

    takes_text = True

    def __init__(self, model_id: str, text: str | Sequence[str], options: DetectOptions) -> None:
        super().__init__(options)
        self.model_id = str(model_id)
        self.phrases = parse_text(text)
        self.names = dict(enumerate(self.phrases))
        self._model = None
        self._processor = None
        self.load()  # now: a model that cannot load fails the run before it starts, not image by image

    def _unloaded(self) -> tuple[str, ...]:
        return ("_model", "_processor")

    def with_text(self, text: str | Sequence[str]) -> "TextDetector":
        """This detector looking for other phrases, sharing its loaded network (a service that is
        asked for new words on every request loads the model once)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)  # not copy.copy: it pickles, which leaves the network out
        other.phrases = parse_text(text)
        other.names = dict(enumerate(other.phrases))
        return other

    def _device(self):
        import torch

        wanted = self.options.device
        if wanted:
            return torch.device(wanted)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def load(self) -> None:
        if self._model is None:
            try:
                import transformers  # noqa: F401
            except ImportError:
                raise AnnotateError(_needs_transformers(self.model_id)) from None
            self._model, self._processor = self._build()
            self._model.to(self._device()).eval()

    def _build(self):
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        path = Path(self.model_id).expanduser()
        where = str(path.resolve()) if path.is_dir() else self.model_id
        return {"kind": self.kind, "model": where, "text": self.phrases, "text_threshold": self.options.text_threshold}

    def _finish(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Detections:
        """Threshold, class filter, class-aware NMS and max_det, as for a YOLO model."""
        o = self.options
        keep = scores > o.conf
        if o.classes is not None:
            keep &= np.isin(class_ids, o.classes)
        boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        order = class_aware_nms(boxes, scores, class_ids, o.iou)[: o.max_det]
        return Detections(boxes[order], scores[order], class_ids[order], self.names)


class GroundingDino(TextDetector):
    """GroundingDINO: one query per candidate box, scored against every token of the prompt.

    A box's score is its best token's, as in the official pipeline (the box threshold: conf); its
    class is the phrase whose tokens score highest for it, kept when that phrase's best token
    passes text_threshold (the official pipeline turns the tokens above text_threshold into a
    label string instead, which need not be one of the phrases)."""

    kind = "GroundingDINO text detector"

    def _build(self):
        from transformers import (AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                                  GroundingDinoProcessor)

        model = from_pretrained(GroundingDinoForObjectDetection, self.model_id)
        image_processor = from_pretrained(GroundingDinoImageProcessorPil, self.model_id)
        processor = GroundingDinoProcessor(image_processor=image_processor,
                                           tokenizer=from_pretrained(AutoTokenizer, self.model_id))
        return model, processor

    def prompt(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt text ('building. tree.') and each phrase's character span in it."""
        spans, text = [], ""
        for phrase in self.phrases:
            spans.append((len(text), len(text) + len(phrase)))
            text += phrase + ". "
        return text.strip(), spans

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        import torch
        from PIL import Image

        self.load()
        text, spans = self.prompt()
        inputs = self._processor(images=Image.fromarray(image), text=text, return_tensors="pt")
        tokens = self._processor.tokenizer(text, return_offsets_mapping=True)
        if list(tokens["input_ids"]) != inputs["input_ids"][0].tolist():
            raise AnnotateError(f"{self.model_id}: its tokenizer splits the prompt differently from its processor")
        device = self._device()
        with torch.inference_mode():
            outputs = self._model(**{k: v.to(device) for k, v in inputs.items()})
        probs = outputs.logits[0].sigmoid().float().cpu().numpy()  # (queries, max text length)
        probs = probs[:, : len(tokens["input_ids"])]
        token_phrase = np.full(probs.shape[1], -1)
        for t, (start, end) in enumerate(tokens["offset_mapping"]):
            for c, (a, b) in enumerate(spans):
                if end > start and start >= a and end <= b:
                    token_phrase[t] = c
        in_phrase = token_phrase >= 0
        if not in_phrase.any():
            return Detections.empty(self.names)
        scores = probs.max(axis=1).astype(np.float64)  # every token counts, as in the official pipeline
        per_phrase = np.stack([
            probs[:, token_phrase == c].max(axis=1) if (token_phrase == c).any() else np.zeros(len(probs))
            for c in range(len(self.phrases))
        ], axis=1)
        class_ids = per_phrase.argmax(axis=1)
        matched = per_phrase[np.arange(len(probs)), class_ids] > self.options.text_threshold
        height, width = image.shape[:2]
        cx, cy, w, h = outputs.pred_boxes[0].float().cpu().numpy().astype(np.float64).T
        boxes = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
                         axis=1)
        return self._finish(boxes[matched], scores[matched], class_ids[matched])


class Owlv2(TextDetector):
    """OWLv2: one candidate box per image patch, scored against each phrase (a query each). The
    image is padded to a square at the bottom and right, so boxes (relative to that square) scale
    by the longer side."""

    kind = "OWLv2 text detector"

    def _build(self):
        from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

        model = from_pretrained(Owlv2ForObjectDetection, self.model_id)
        processor = Owlv2Processor(image_processor=from_pretrained(Owlv2ImageProcessorPil, self.model_id),
                                   tokenizer=from_pretrained(AutoTokenizer, self.model_id))
        return model, processor

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        import torch
        from PIL import Image

        self.load()
        inputs = self._processor(images=Image.fromarray(image), text=[self.phrases], return_tensors="pt")
        device = self._device()
        with torch.inference_mode():
            outputs = self._model(**{k: v.to(device) for k, v in inputs.items()})
        logits = outputs.logits[0].float().cpu().numpy()  # (patches, phrases)
        class_ids = logits.argmax(axis=1)
        scores = 1.0 / (1.0 + np.exp(-logits[np.arange(len(logits)), class_ids].astype(np.float64)))
        side = max(image.shape[:2])
        cx, cy, w, h = outputs.pred_boxes[0].float().cpu().numpy().astype(np.float64).T * side
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return self._finish(boxes, scores, class_ids)


def text_detector(det_model: str, text: str | Sequence[str], options: DetectOptions) -> TextDetector:
    family = text_model_family(det_model)
    if family == GROUNDING_DINO:
        return GroundingDino(det_model, text, options)
    if family == OWLV2:
        return Owlv2(det_model, text, options)
    raise AnnotateError(_not_a_text_model(det_model))
