"""`samkit.auto_annotate`: a detector's boxes (or a text prompt's) in, a segmentation dataset out.

Per image: read it (the next one is read in the background meanwhile), detect, run SAM once on
all its boxes (`Predictor.predict_batch`, one mask per box), turn the masks into objects (tight
crops), encode them in the output format, write. Nothing of an image is kept once it is
written, so memory does not grow with the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ImageError
from .detectors import DetectOptions, Detector, finalize, load_detector
from .formats import get_format
from .formats.base import Encoder, RunInfo, Writer
from .images import default_output_dir, list_images
from .records import AnnotateError, AnnotateSummary, Detections, ImageInfo, ImageResult, ShapeOptions
from .shapes import objects_from_masks

# Masks of at most this many pixels (bool bytes) are upscaled in one predict_batch call; an
# image's boxes are split into calls of at most 64 boxes and this budget.
MASK_BYTES = 1 << 28
MAX_BOXES_PER_CALL = 64


# What fails one image, not the run: an unreadable image, a malformed label file. Anything else
# (a checkpoint that does not load, ...) stops the run with its own error.
PER_IMAGE_ERRORS = (ImageError, AnnotateError)


class AnnotateWarning(UserWarning):
    """An image was skipped (unreadable, a malformed label file): the run goes on."""


@dataclass
class Pipeline:
    """What runs per image: detector, SAM, shapes and the format's encoder. Picklable (the
    detector's and SAM's loaded state is rebuilt once per process), so a Dask worker can run it."""

    detector: Detector
    sam: Any  # a model name / checkpoint path, or a loaded samkit.Sam
    device: str | None
    dtype: str | None
    shape: ShapeOptions
    encoder: Encoder
    _predictor: Any = dataclasses.field(default=None, repr=False, compare=False)

    def predictor(self):
        """SAM's predictor for this pipeline, made on first use (on a Dask worker: once per worker,
        the scattered pipeline lives there for the whole run)."""
        from ..predictor import Predictor

        if isinstance(self.sam, Predictor):  # the caller's, with its embedding cache
            return self.sam
        if self._predictor is None:
            model = self.sam
            if isinstance(model, (str, os.PathLike)):
                model = _load_sam(model, self.device, self.dtype)
            self._predictor = Predictor(model, cache_size=1)
        return self._predictor

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_predictor": None}

    def run(self, image: np.ndarray, info: ImageInfo, predictor=None) -> ImageResult:
        """One image, already read: detections, masks, objects, the encoded payload."""
        height, width = image.shape[:2]
        info = dataclasses.replace(info, width=width, height=height)
        dets, _ = finalize(self.detector.detect(image, info), self.detector, width, height)
        names = {**self.detector.names, **dets.names}
        objects, empty = segment(image, dets, predictor or self.predictor(), self.shape)
        return ImageResult(info, self.encoder(info, objects, names), len(dets), len(objects), empty, dets.names)

    def process(self, info: ImageInfo) -> ImageResult:
        """Read and annotate one image (a Dask task); an unreadable image or bad labels give a
        result with the reason, not an exception."""
        from ..utils.image_io import load_image

        try:
            return self.run(load_image(info.path), info)
        except PER_IMAGE_ERRORS as exc:
            return ImageResult(info, error=str(exc))


def _load_sam(sam, device, dtype):
    from ..build import load_model

    return load_model(sam, device=device, dtype=dtype)


def segment(image: np.ndarray, dets: Detections, predictor, shape: ShapeOptions):
    """SAM on every box of one image: (objects, boxes that gave an empty mask)."""
    if not len(dets):
        return [], 0
    predictor.set_image(image)
    height, width = image.shape[:2]
    per_call = max(1, min(MAX_BOXES_PER_CALL, MASK_BYTES // (height * width)))
    taken = np.zeros((height, width), dtype=bool) if shape.non_overlapping else None
    objects, empty = [], 0
    for start in range(0, len(dets), per_call):
        chunk = dets.select(np.arange(start, min(start + per_call, len(dets))))
        masks, scores, _ = predictor.predict_batch(boxes=chunk.boxes, multimask_output=False, return_low_res=False)
        found, none = objects_from_masks(masks[:, 0], scores[:, 0], chunk, shape, taken)
        objects += found
        empty += none
        del masks
    return objects, empty


def resolve_classes(classes: Any, detector: Detector) -> tuple[int, ...] | None:
    """Class ids to keep from ids and/or names; AnnotateError when they match none of the
    detector's classes (a warning when only some are unknown)."""
    if classes is None:
        return None
    items = [classes] if isinstance(classes, (int, str, np.integer)) else list(classes)
    by_name = {v.lower(): k for k, v in detector.names.items()}
    ids: list[int] = []
    unknown: list[str] = []
    for item in items:
        if isinstance(item, str) and not item.strip().lstrip("-").isdigit():
            if item.strip().lower() in by_name:
                ids.append(by_name[item.strip().lower()])
            else:
                unknown.append(repr(item))
        else:
            ids.append(int(item))
    known = detector.known_ids()
    if known is None and hasattr(detector, "all_ids"):
        known = detector.all_ids()
    if known is not None:
        unknown += [str(i) for i in ids if i not in known]
        ids = [i for i in ids if i in known]
    described = ", ".join(f"{k}: {v}" for k, v in sorted(detector.names.items())[:20]) or (
        ", ".join(map(str, sorted(known)[:20])) if known else "none known")
    if not ids:
        raise AnnotateError(f"classes {', '.join(unknown) or items} match none of the classes of the {detector.kind} "
                            f"({described})")
    if unknown:
        warnings.warn(f"classes {', '.join(unknown)} are not among the classes of the {detector.kind} ({described}); "
                      "the others are kept", AnnotateWarning, stacklevel=3)
    return tuple(sorted(set(ids)))


def _sam_fingerprint(sam: Any, dtype: str | None) -> str:
    """The SAM model and its precision, as words (compared when a run resumes)."""
    if isinstance(sam, (str, os.PathLike)):
        path = Path(sam).expanduser()
        return f"{path.resolve() if path.exists() else sam}:{dtype or 'float32'}"
    model = getattr(sam, "model", sam)  # a Predictor's model
    precision = str(getattr(model, "compute_dtype", None) or getattr(model, "dtype", "")).replace("torch.", "")
    return f"{getattr(model, 'arch', type(model).__name__)}:{getattr(model, 'checkpoint_path', None)}:{precision}"


def auto_annotate(
    data: str | os.PathLike,
    det_model: Any = None,
    sam_model: Any = "mobile_sam",
    device: str = "",
    conf: float = 0.25,
    iou: float = 0.45,
    imgsz: int = 640,
    max_det: int = 300,
    classes: Sequence[int | str] | int | str | None = None,
    output_dir: str | os.PathLike | None = None,
    format: str = "yolo",
    text: str | Sequence[str] | None = None,
    *,
    text_threshold: float = 0.25,
    mask_format: str | None = None,
    holes: bool = True,
    pieces: str = "merge",
    min_area: int = 0,
    non_overlapping: bool = False,
    tolerance: float = 1.0,
    skip_existing: bool = False,
    dask: Any = None,
    progress: bool = True,
    format_options: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> AnnotateSummary:
    """Detect objects in every image of `data` and segment them with SAM; write a segmentation
    dataset. Ultralytics' `auto_annotate` arguments, defaults and output layout, and more:

    - data: a folder of images (not its subfolders) or one image file.
    - det_model: what finds the boxes (see samkit.annotate.detectors.load_detector): a folder of
      YOLO box labels or a COCO JSON (existing boxes, class ids kept), a YOLO .onnx export, an
      Ultralytics .pt model (needs ultralytics), a GroundingDINO / OWLv2 model (Hugging Face id
      or folder) with `text`, or a callable image -> (boxes, scores, classes).
    - sam_model: any name or checkpoint samkit.load_model takes, a loaded model, or a
      samkit.Predictor (its embedding cache is used).
    - device: "" picks the best available ("cpu", "cuda", "cuda:1", "mps"); dtype: SAM's compute
      precision for a model loaded by name ("bfloat16" roughly halves the image encoder's time on a
      CPU with bf16 support; None: float32).
    - conf, iou, imgsz, max_det, classes: the detector's score threshold (the box threshold of
      a text detector), class-aware NMS IoU, YOLO input size, most boxes per image, and the
      class ids (or names) to keep. Boxes from label files keep every box (no conf, NMS or
      max_det); classes applies to them too.
    - output_dir: default `<data parent>/<data name>_auto_annotate_labels`.
    - format: "yolo" (`<stem>.txt` per image, `cls x1 y1 x2 y2 ...` normalised; classes.txt and
      data.yaml when class names are known), "coco" (annotations.json), "labelstudio"
      (tasks.json + label_config.xml), or a registered format ("fiftyone" with samkit[fiftyone]).
    - text: phrases to find ("building. tree."), for a text detector; text_threshold: the
      matched phrase's score threshold (GroundingDINO).
    - mask_format: "polygons" or "rle" for coco (default rle) and labelstudio (default rle =
      brush); holes, pieces, min_area, non_overlapping, tolerance: see ShapeOptions.
    - skip_existing: images whose output exists (from an interrupted or earlier run with the
      same settings) are not redone; otherwise outputs are overwritten, never appended to.
    - dask: a number of local worker processes, a scheduler address or a distributed.Client.
    - progress: a progress bar on a terminal. format_options: the format's own options (e.g.
      labelstudio: url_prefix, document_root, from_name; fiftyone: dataset, field).

    Images without detections get an empty label file (background); an unreadable image is
    reported (AnnotateWarning) and skipped. Returns an AnnotateSummary. Raises AnnotateError
    (one line) for bad input: a missing folder, an unknown detector, labels without images, a
    class filter matching nothing, text with an image-only detector.
    """
    root, images = list_images(data)
    options = DetectOptions(conf=float(conf), iou=float(iou), imgsz=int(imgsz), max_det=int(max_det),
                            text_threshold=float(text_threshold), device=device or None)
    detector = load_detector(det_model, text, options)
    detector.prepare(images, root)
    detector.options = dataclasses.replace(options, classes=resolve_classes(classes, detector))
    factory = get_format(format)
    out = Path(output_dir).expanduser() if output_dir is not None else default_output_dir(data)
    _check_output(out, detector)
    writer = make_writer(factory, format, out, format_options or {})
    mask_format = mask_format or writer.mask_formats[0]
    if mask_format not in writer.mask_formats:
        raise AnnotateError(f"format {writer.name} writes {' or '.join(writer.mask_formats)} masks, "
                            f"not {mask_format!r}")
    shape = ShapeOptions(holes=bool(holes), pieces=pieces, min_area=int(min_area),
                         non_overlapping=bool(non_overlapping), tolerance=float(tolerance), mask_format=mask_format)
    fingerprint = {
        "detector": detector.fingerprint(),
        "sam_model": _sam_fingerprint(sam_model, dtype),
        "detect": {k: v for k, v in dataclasses.asdict(detector.options).items() if k != "device"},
        "shape": dataclasses.asdict(shape),
        "format_options": writer.fingerprint(),
    }
    pipeline = Pipeline(detector, sam_model, device or None, dtype, shape, writer.encoder(shape))
    # SAM loads before anything is written (a wrong checkpoint fails here); Dask workers load their own
    predictor = pipeline.predictor() if dask is None else None
    summary = AnnotateSummary(out, writer.name, images=len(images), names=dict(detector.names))
    done = writer.start(RunInfo(root, fingerprint, bool(skip_existing), dict(detector.names)))
    todo = [info for info in images if writer.done_key(info) not in done]
    summary.skipped_existing = len(images) - len(todo)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(images), initial=summary.skipped_existing, desc="auto-annotate", unit="image",
               disable=None if progress else True, dynamic_ncols=True, file=sys.stderr)
    results = _distributed(pipeline, todo, dask) if dask is not None and todo else _in_process(pipeline, todo,
                                                                                                   predictor)
    try:
        with contextlib.closing(results):
            for result in results:
                _record(result, writer, summary, bar)
        summary.outputs = writer.outputs = writer.finish(summary.names)
        summary.where = writer.describe()
    except BaseException:
        summary.interrupted = True
        writer.close()
        raise
    finally:
        bar.close()
    return summary


def make_writer(factory, name: str, out: Path, options: dict[str, Any]) -> Writer:
    """factory(out, **options), with options it does not take named in one line."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # not introspectable: let the call say
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    known = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
             or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]  # after output_dir
    unknown = sorted(set(options) - set(known)) if parameters and not takes_any else []
    if unknown:
        raise AnnotateError(f"format {name!r} has no option {', '.join(unknown)} "
                            f"(its options: {', '.join(known) or 'none'})")
    return factory(out, **options)


def _check_output(out: Path, detector: Detector) -> None:
    if out.exists() and not out.is_dir():
        raise AnnotateError(f"output_dir {out} is a file, not a folder")
    folder = getattr(detector, "folder", None)
    if folder is not None and out.resolve() == Path(folder).resolve():
        raise AnnotateError(f"output_dir {out} is the folder of the box labels being read: the masks would overwrite "
                            "them; choose another output folder")


def _record(result: ImageResult, writer: Writer, summary: AnnotateSummary, bar) -> None:
    if result.error is not None:
        summary.failed.append((result.image.key, result.error))
        warnings.warn(f"skipped {result.image.key}: {result.error}", AnnotateWarning, stacklevel=4)
    else:
        writer.write(result)
        summary.done += 1
        summary.boxes += result.boxes
        summary.objects += result.objects
        summary.empty_masks += result.empty_masks
        summary.empty_images += int(result.objects == 0)
        for k, v in result.names.items():
            summary.names.setdefault(k, v)
    bar.update(1)


def _in_process(pipeline: Pipeline, todo: list[ImageInfo], predictor) -> Iterator[ImageResult]:
    """Images one after the other in this process; the next is read while this one is worked on."""
    from ..utils.image_io import load_image
    from ..utils.prefetch import prefetch

    if not todo:
        return
    with contextlib.closing(prefetch(todo, lambda info: load_image(info.path))) as loaded:
        for info, future in loaded:
            try:
                result = pipeline.run(future.result(), info, predictor)
            except PER_IMAGE_ERRORS as exc:
                result = ImageResult(info, error=str(exc))
            yield result


def _distributed(pipeline: Pipeline, todo: list[ImageInfo], dask: Any) -> Iterator[ImageResult]:
    """Images spread over Dask workers, a few per worker thread in flight at a time (not the
    whole folder's tasks at once), results written here as they come."""
    from ..utils.cluster import dask_client

    from ..predictor import Predictor

    if isinstance(pipeline.sam, Predictor):  # its embedding cache stays here; the workers get the model
        pipeline = dataclasses.replace(pipeline, sam=pipeline.sam.model)
    client, close = dask_client(dask, AnnotateError)
    try:
        from distributed import as_completed

        remote = client.scatter(pipeline, broadcast=True, hash=False)
        window = max(2, 2 * sum(client.nthreads().values()))
        pending = iter(todo)
        running = as_completed()

        def submit(count: int) -> None:
            for info in _take(pending, count):
                running.add(client.submit(_process, remote, info, pure=False))

        submit(window)
        for future in running:
            result = future.result()
            future.release()
            submit(1)
            yield result
    finally:
        close()


def _take(items: Iterator[ImageInfo], count: int) -> list[ImageInfo]:
    out = []
    for _ in range(count):
        try:
            out.append(next(items))
        except StopIteration:
            break
    return out


def _process(pipeline: Pipeline, info: ImageInfo) -> ImageResult:
    return pipeline.process(info)

