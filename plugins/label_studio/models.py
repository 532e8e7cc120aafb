"""Validated request bodies of the Label Studio ML backend protocol (as Label Studio 1.23.2 sends them).

Tasks in interactive requests carry every annotation, draft and prediction of the task, brush
RLEs included, so they grow with the work. The models declare only the fields the backend uses
and are validated straight from the raw JSON bytes (`model_validate_json`): pydantic's parser
skips undeclared fields without building Python objects for them.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequestError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RegionValue(_Model):
    x: Optional[float] = None
    y: Optional[float] = None
    width: Optional[float] = None
    height: Optional[float] = None
    rotation: Optional[float] = 0.0
    keypointlabels: Optional[list[str]] = None
    rectanglelabels: Optional[list[str]] = None
    labels: Optional[list[str]] = None
    text: Optional[Union[list[str], str]] = None  # a TextArea's


class Region(_Model):
    """One result item. Only keypoint and rectangle geometry is declared: a brush RLE or polygon
    points in `value` are skipped by the parser."""

    type: str = ""
    from_name: str = ""
    to_name: str = ""
    original_width: Optional[int] = None
    original_height: Optional[int] = None
    is_positive: Optional[bool] = None
    value: Optional[RegionValue] = None


    @property
    def text(self) -> Optional[str]:
        """A TextArea region's text (its entries joined by '.'), or None."""
        v = self.value
        if v is None or v.text is None:
            return None
        entries = [v.text] if isinstance(v.text, str) else v.text
        joined = ". ".join(t.strip() for t in entries if t and t.strip())
        return joined or None

    @property
    def label(self) -> Optional[str]:
        v = self.value
        if v is None:
            return None
        for labels in (v.keypointlabels, v.rectanglelabels, v.labels):
            if labels:
                return labels[0]
        return None


class Annotation(_Model):
    result: list[Region] = Field(default_factory=list)
    was_cancelled: bool = False
    model_version: Optional[str] = None


class Task(_Model):
    id: Optional[int] = None
    data: dict[str, Any] = Field(default_factory=dict)
    annotations: list[Annotation] = Field(default_factory=list)
    predictions: list[Annotation] = Field(default_factory=list)


class Context(_Model):
    result: list[Region] = Field(default_factory=list)


class Params(_Model):
    login: Optional[str] = None
    password: Optional[str] = None
    context: Optional[Context] = None


class PredictRequest(_Model):
    tasks: list[Task]
    project: Optional[Union[str, int]] = None
    label_config: Optional[str] = None
    params: Params = Field(default_factory=Params)


class SetupRequest(_Model):
    project: Optional[Union[str, int]] = None
    schema_: Optional[str] = Field(default=None, alias="schema")
    hostname: Optional[str] = None
    access_token: Optional[str] = None
    extra_params: Optional[Any] = None


class PrecomputeRequest(_Model):
    project: Optional[int] = None  # a Label Studio project id: every task's image
    tasks: Optional[list[Task]] = None  # or these tasks
    label_config: Optional[str] = None
    # Also pre-label: compute each task's batch prediction and store it in Label Studio
    # (POST /api/predictions/), skipping tasks that already hold this model_version's.
    predictions: bool = False


def parse_body(model: type[BaseModel], body: bytes, what: str):
    """Validate raw JSON bytes; BadRequestError with a readable summary on failure."""
    if not body.strip():
        raise BadRequestError(f"{what}: empty request body; send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        problems = []
        for err in e.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
            problems.append(f"{loc}: {err.get('msg')}")
        if any(err.get("type") == "json_invalid" for err in e.errors()):
            raise BadRequestError(f"{what}: the body is not valid JSON ({problems[0]})") from None
        raise BadRequestError(f"{what}: invalid request: " + "; ".join(problems)) from None


def project_id(project: Optional[Union[str, int]]) -> Optional[str]:
    """Label Studio sends the project as "<id>.<created-at timestamp>"; the id part."""
    if project is None:
        return None
    return str(project).split(".")[0] or None
