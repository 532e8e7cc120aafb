"""Read a Label Studio labeling config: which tools point at which image, with which labels.

Only what the backend needs: the image object tags (name, data variable), the control tags
SAM can take prompts from (KeyPointLabels, RectangleLabels) or give results to (BrushLabels,
PolygonLabels), and TextArea tags on an image (text prompts: what is typed there is looked for by
a text detector, as in Label Studio's GroundingSAM example). Everything else is ignored.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import LabelConfigError

PROMPT_TOOLS = {"KeyPointLabels": "keypointlabels", "RectangleLabels": "rectanglelabels"}
OUTPUT_TOOLS = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels"}
# The label-less variants exist too (<Brush>, <Polygon>, <KeyPoint>, <Rectangle>).
UNLABELED = {"KeyPoint": "KeyPointLabels", "Rectangle": "RectangleLabels",
             "Brush": "BrushLabels", "Polygon": "PolygonLabels"}
SUPPORTED = "KeyPointLabels, RectangleLabels, BrushLabels, PolygonLabels"


@dataclass(frozen=True)
class Control:
    """One control tag: `<BrushLabels name="brush" toName="image">` and its labels."""

    tag: str  # canonical tag: KeyPointLabels | RectangleLabels | BrushLabels | PolygonLabels
    name: str
    to_name: str
    labels: tuple[str, ...] = ()
    smart: bool = False

    @property
    def result_type(self) -> str:
        """The `type` of a result region ("brushlabels", ...)."""
        return {**PROMPT_TOOLS, **OUTPUT_TOOLS}[self.tag]

    def pick_label(self, wanted: str | None) -> str | None:
        """The label to put on a region: the wanted one if this control has it (or has no
        labels at all), else this control's first label."""
        if wanted and (wanted in self.labels or not self.labels):
            return wanted
        return self.labels[0] if self.labels else wanted


@dataclass(frozen=True)
class LabelConfig:
    images: dict[str, str]  # image tag name -> task data key ("$image" -> "image")
    controls: tuple[Control, ...] = field(default_factory=tuple)
    text_areas: tuple[str, ...] = ()  # names of <TextArea> tags on an image: text prompts are on

    @property
    def text_prompts(self) -> bool:
        return bool(self.text_areas)

    def label_names(self) -> list[str]:
        """The output tools' label names, in order, without repeats and without 'Background'
        (what batch pre-labelling looks for when text prompts are on)."""
        names: list[str] = []
        for c in self.outputs():
            names += [n for n in c.labels if n not in names and n.strip().lower() != "background"]
        return names

    def outputs(self, to_name: str | None = None) -> list[Control]:
        return [c for c in self.controls if c.tag in OUTPUT_TOOLS
                and (to_name is None or c.to_name == to_name)]

    def prompts(self, to_name: str | None = None) -> list[Control]:
        return [c for c in self.controls if c.tag in PROMPT_TOOLS
                and (to_name is None or c.to_name == to_name)]

    def control(self, name: str) -> Control | None:
        return next((c for c in self.controls if c.name == name), None)

    def data_key(self, image_name: str) -> str:
        return self.images[image_name]

    @property
    def default_image(self) -> str:
        """The image that output tools point at (the first one that has any)."""
        for c in self.controls:
            if c.tag in OUTPUT_TOOLS:
                return c.to_name
        return next(iter(self.images))


def _bool(v: str | None) -> bool:
    return (v or "").strip().lower() in ("true", "1", "yes")


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Parse a labeling config. Raises LabelConfigError (with what to change) when it has no
    image, or no BrushLabels/PolygonLabels tool pointing at one."""
    if not xml or not xml.strip():
        raise LabelConfigError("the project has no labeling config; add one with an <Image> and a "
                               "<BrushLabels> or <PolygonLabels> tool")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"the labeling config is not valid XML: {e}") from None

    images: dict[str, str] = {}
    controls: list[Control] = []
    text_areas: list[tuple[str, str]] = []
    for el in root.iter():
        tag = el.tag
        name = el.get("name")
        if tag == "Image" and name:
            value = (el.get("value") or "").strip()
            images[name] = value[1:] if value.startswith("$") else value
            continue
        if tag == "TextArea" and name and el.get("toName"):
            text_areas.append((name, el.get("toName").split(",")[0]))
            continue
        tag = UNLABELED.get(tag, tag)
        if tag in PROMPT_TOOLS or tag in OUTPUT_TOOLS:
            to_name = el.get("toName") or ""
            if not name or not to_name:
                raise LabelConfigError(f"<{el.tag}> needs both name= and toName= attributes")
            labels = tuple(lab.get("value") for lab in el if lab.tag == "Label" and lab.get("value"))
            smart = _bool(el.get("smart")) or _bool(el.get("smartOnly")) or any(
                _bool(lab.get("smart")) for lab in el if lab.tag == "Label")
            controls.append(Control(tag, name, to_name.split(",")[0], labels, smart))

    if not images:
        raise LabelConfigError("the labeling config has no <Image> tag; samkit segments images only")
    controls = [c for c in controls if c.to_name in images]
    if not any(c.tag in OUTPUT_TOOLS for c in controls):
        found = sorted({c.tag for c in controls})
        raise LabelConfigError(
            "the labeling config has no tool samkit can answer with: add a <BrushLabels> or "
            "<PolygonLabels> tool pointing at the image (toName=\"...\"), and a smart "
            "<KeyPointLabels> and/or <RectangleLabels> to click with"
            + (f" (found only {', '.join(found)})" if found else "")
            + f"; supported tools: {SUPPORTED}")
    return LabelConfig(images=images, controls=tuple(controls),
                       text_areas=tuple(name for name, to_name in text_areas if to_name in images))
