"""The exporter: a model's graphs to ONNX files in one folder, with a model.json that describes them.

Each model family describes its own graphs (`FamilyExport`, e.g. `sam1.SAM1`): which parts it
has, the module to trace for each, example inputs, tensor names and which axes are dynamic. This
module does what is the same for every family: loading the model, checking the request, running
torch's exporter, quantising, writing the folder atomically and the metadata; and it holds the
pieces of the prompt-decoder graphs and descriptions that the SAM families share (SAM 1's and
SAM 2's prompt encoders embed labels and masks alike).

Nothing here imports torch at import time (samkit.export imports this module; OnnxPredictor must
work without torch): torch is imported when an export runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence

from ..errors import SamkitError
from ..utils.files import atomic_directory, check_new_directory

FORMATS = ("onnx",)
METADATA_FILE = "model.json"
METADATA_VERSION = 1
# onnx protobuf files are limited to 2 GiB; larger graphs (SAM ViT-H's encoder, 2.5 GB) keep their
# weights in a `<file>.data` file beside them (ONNX external data), which onnxruntime and
# onnxruntime-web (the `externalData` session option) read.
EXTERNAL_DATA_BYTES = 1536 * 2**20
ENCODER_INPUT = "image"  # every family's encoder takes the preprocessed image (1, 3, S, S) by this name


@dataclass(frozen=True)
class ExportOptions:
    """What the caller asked of the graphs (families read what applies to them)."""

    dynamic_points: bool = True
    num_points: int = 2
    single_mask: bool = False


@dataclass
class Graph:
    """One module to export: example inputs by name (in forward's order), output names, and the
    dynamic axes per input ({axis: name}; inputs not listed are static)."""

    module: Any  # torch.nn.Module
    inputs: dict[str, Any]  # name -> example torch.Tensor
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)  # what model.json says of this part
    context: Callable[[], ContextManager[Any]] | None = None  # entered around the export


class FamilyExport(Protocol):
    """How one model family is exported (see sam1.SAM1)."""

    name: str
    parts: tuple[str, ...]
    quantizable: tuple[str, ...]

    def accepts(self, model: Any) -> bool: ...

    def graph(self, model: Any, part: str, options: ExportOptions) -> Graph: ...

    def metadata(self, model: Any, options: ExportOptions) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ExportResult:
    """An export's folder, its files by part ("encoder", "decoder", "decoder_quantized") and the
    contents of its model.json."""

    output_dir: Path
    files: dict[str, Path]
    metadata: dict[str, Any]


# -- what the SAM families' graphs share ---------------------------------------------------------
def plain_modules(model: Any, prompt_encoder_type: type, mask_decoder_type: type, what: str) -> tuple[Any, Any]:
    """The model's prompt encoder and mask decoder, which are traced: the family's plain reference
    modules (of prompt_encoder_type / mask_decoder_type, which the model holds; a fast inference
    engine only reads their weights and is never traced), else a SamkitError naming what the model
    holds. what: the decoder's name in that message ("SAM", "SAM 2")."""
    prompt_encoder, mask_decoder = model.prompt_encoder, model.mask_decoder
    if not isinstance(prompt_encoder, prompt_encoder_type) or not isinstance(mask_decoder, mask_decoder_type):
        raise SamkitError(
            f"cannot export a {what} decoder made of {type(prompt_encoder).__name__} and "
            f"{type(mask_decoder).__name__}: expected samkit's plain {prompt_encoder_type.__name__} and "
            f"{mask_decoder_type.__name__}"
        )
    return prompt_encoder, mask_decoder


def hold_decoder_modules(graph_module: Any, prompt_encoder: Any, mask_decoder: Any, single_mask: bool) -> None:
    """Set up a decoder graph (an nn.Module, after its nn.Module.__init__): it holds the prompt
    encoder and mask decoder, single_mask, the prompt frame's input_size (h, w), and the dense
    positional encoding as the buffer image_pe: it depends on the weights only, so it is a
    constant of the graph (samkit's prompt encoders may also keep it cached outside autograd)."""
    import torch

    graph_module.prompt_encoder = prompt_encoder
    graph_module.mask_decoder = mask_decoder
    graph_module.single_mask = single_mask
    graph_module.input_size = tuple(int(v) for v in prompt_encoder.input_image_size)
    with torch.no_grad():
        image_pe = prompt_encoder.get_dense_pe().detach().clone()
    graph_module.register_buffer("image_pe", image_pe, persistent=False)


def embed_labels(prompt_encoder: Any, embedding: Any, labels: Any) -> Any:
    """Positional encodings of points (B, N, C) and their labels (B, N, 1) -> sparse embeddings, as
    SAM's prompt encoders embed points and box corners (labels 0-3, -1 padding); written with masks
    instead of indexing so that any label mix is one graph."""
    embedding = embedding * (labels != -1) + prompt_encoder.not_a_point_embed.weight * (labels == -1)
    for index, point_embedding in enumerate(prompt_encoder.point_embeddings):
        embedding = embedding + point_embedding.weight * (labels == index)
    return embedding


def embed_masks(prompt_encoder: Any, mask_input: Any, has_mask: Any) -> Any:
    """The dense embedding: of mask_input where has_mask (broadcastable to it) is 1, else "no mask"."""
    no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    return has_mask * prompt_encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask


def encoder_graph(module: Any, size: int, output_names: tuple[str, ...], context: Any = None) -> Graph:
    """An image encoder's Graph: input ENCODER_INPUT (1, 3, size, size), the input size described;
    context: entered around the export (Graph.context)."""
    import torch

    return Graph(
        module,
        {ENCODER_INPUT: torch.zeros(1, 3, size, size)},
        output_names,
        description={"input_size": [size, size]},
        context=context,
    )


def decoder_description(options: ExportOptions, num_masks: int, **more: Any) -> dict[str, Any]:
    """What model.json says of a decoder part: single_mask, num_masks (and `more` counts), the point count."""
    return {
        "single_mask": options.single_mask,
        "num_masks": num_masks,
        **more,
        "dynamic_points": options.dynamic_points,
        **({} if options.dynamic_points else {"num_points": options.num_points}),
    }


def model_description(family: str, model: Any, size: int, **more: Any) -> dict[str, Any]:
    """model.json's description of a SAM-family model: family, model (arch), input_size, the
    embedding's shape (C, h, w), `more`, the low-res mask size (h, w) and the mask threshold."""
    prompt_encoder = model.prompt_encoder
    return {
        "family": family,
        "model": model.arch,
        "input_size": size,
        "embedding_shape": [prompt_encoder.embed_dim, *map(int, prompt_encoder.image_embedding_size)],
        **more,
        "low_res_size": list(map(int, prompt_encoder.mask_input_size)),
        "mask_threshold": float(getattr(model, "mask_threshold", 0.0)),
    }


def families() -> dict[str, FamilyExport]:
    """Exporters by family name (registry.Family.name for the registry's families)."""
    from .sam1 import SAM1
    from .sam2 import SAM2

    return {SAM1.name: SAM1, SAM2.name: SAM2}


def family_of(model: Any) -> FamilyExport:
    """The exporter of a model's family: the one that accepts the model's class (a model built in
    memory, e.g. modeling.sam2.build_sam2, need not be in the registry), else by the registry record
    of its `arch`."""
    from ..registry import MODELS

    exporters = families()
    for exporter in exporters.values():
        if exporter.accepts(model):
            return exporter
    spec = MODELS.get(getattr(model, "arch", None))
    if spec is None or spec.family.name not in exporters:
        exportable = [name for name, s in MODELS.items() if s.family.name in exporters]
        what = f"{spec.title} ({spec.family.title})" if spec is not None else repr(getattr(model, "arch", None))
        raise SamkitError(f"samkit cannot export {what} yet; exportable models: {', '.join(exportable)}")
    return exporters[spec.family.name]


def export_model(
    model: Any,
    output_dir: str | os.PathLike,
    format: str = "onnx",
    parts: Sequence[str] | str | None = None,
    opset: int | None = None,
    quantize: bool = False,
    dynamic_points: bool = True,
    single_mask: bool = False,
    overwrite: bool = False,
    num_points: int = 2,
    fiftyone_app: bool = False,
) -> ExportResult:
    """Export `model` into the folder `output_dir` (`samkit.export(...)`, `samkit.export.export(...)`):
    one `<part>.onnx` per part, `decoder.quant.onnx` with quantize, and `model.json`.

    model: a loaded samkit model, or anything `samkit.load_model` takes (a registry name, an
    official or fine-tuned checkpoint file). parts: which graphs ("encoder", "decoder"; default
    all of the family's). quantize: also write an int8 (dynamic, onnxruntime) copy of the decoder.
    dynamic_points=False fixes the decoder's point count at `num_points`. single_mask: the decoder
    returns one mask chosen as the official export does, else all of the model's mask outputs.
    overwrite: replace an existing folder (refused otherwise). fiftyone_app (SAM 2 / 2.1): also
    write the encoder as `encoder.with_runtime_opt.ort` (ORT format, sam2.FIFTYONE_APP_FILES), so
    that the folder holds the two files the FiftyOne App's in-browser SAM 2 downloads from
    FIFTYONE_MODEL_WEIGHTS_BASE_SAM2. The folder is written completely or not at all. Returns an
    ExportResult (folder, files, the model.json metadata).
    """
    if str(format).lower() not in FORMATS:
        raise SamkitError(f"unknown export format {format!r}; samkit exports: {', '.join(FORMATS)}")
    output_dir = Path(output_dir).expanduser()
    try:  # before the model is loaded or anything exported
        check_new_directory(output_dir, overwrite)
    except FileExistsError as exc:
        raise SamkitError(str(exc)) from None
    if isinstance(parts, str):
        parts = [p.strip() for p in parts.split(",") if p.strip()]
    if opset is not None and (not isinstance(opset, int) or opset < 18):
        # The exporter writes opset 18 and converts downwards only where onnx's converter can; it
        # cannot for these graphs (Reduce/Resize axes as inputs), and a silently kept 18 is worse.
        raise SamkitError(f"opset {opset!r} is not supported: use 18 or later (or leave it unset for 18)")
    if not dynamic_points and num_points < 1:
        raise SamkitError(f"num_points must be at least 1 for a fixed point count, got {num_points}")
    _require_onnx_packages(quantize, fiftyone_app)

    if isinstance(model, (str, os.PathLike)):
        from ..build import load_model

        source_name = os.fspath(model)
        model = load_model(model, device="cpu")
    else:
        source_name = getattr(model, "checkpoint_path", None)
    family = family_of(model)
    wanted = tuple(family.parts if parts is None else parts)
    unknown = [p for p in wanted if p not in family.parts]
    if unknown or not wanted:
        raise SamkitError(
            f"unknown part(s) {', '.join(map(repr, unknown)) or '(none given)'} for {family.name}; "
            f"choose from {', '.join(family.parts)}"
        )
    if quantize and not any(p in family.quantizable for p in wanted):
        raise SamkitError(f"quantize applies to the {', '.join(family.quantizable)}, which is not being exported")
    options = ExportOptions(dynamic_points=dynamic_points, num_points=num_points, single_mask=single_mask)
    if fiftyone_app:
        _check_fiftyone_app(family, wanted, options)

    import torch

    model = _cpu_float32(model)
    files: dict[str, str] = {}
    described: dict[str, Any] = {}
    opsets: set[int] = set()
    with _atomic_directory(output_dir, overwrite) as tmp:
        for part in wanted:
            graph = family.graph(model, part, options)
            path = tmp / f"{part}.onnx"
            opsets.add(_export_graph(graph, path, opset, torch))
            files[part] = path.name
            described[part] = {"file": path.name, **_io_description(path), **graph.description}
            data = path.with_name(path.name + ".data")
            if data.is_file():  # its weights, where the graph is too large for one protobuf file
                described[part]["external_data"] = data.name
            if quantize and part in family.quantizable:
                quantized = tmp / f"{part}.quant.onnx"
                _quantize(path, quantized)
                files[f"{part}_quantized"] = quantized.name
                described[part]["quantized_file"] = quantized.name
        app: dict[str, Any] = {}
        if fiftyone_app:
            from .sam2 import fiftyone_app_description, write_ort_encoder

            with _quiet_exporter():
                files["encoder_ort"] = write_ort_encoder(tmp / files["encoder"], tmp)
            described["encoder"]["ort_file"] = files["encoder_ort"]
            app = {"fiftyone_app": fiftyone_app_description()}
        metadata = {
            "format": "onnx",
            "metadata_version": METADATA_VERSION,
            **family.metadata(model, options),
            "parts": described,
            "opset": max(opsets),
            "source": _source(model, source_name),
            "samkit_version": _samkit_version(),
            "exporter": f"torch.onnx dynamo exporter, torch {torch.__version__}",
            **app,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportResult(output_dir, {k: output_dir / v for k, v in files.items()}, metadata)


@contextlib.contextmanager
def _atomic_directory(path: Path, overwrite: bool) -> Iterator[Path]:
    """files.atomic_directory, its refusal to replace a folder as a SamkitError."""
    try:
        with atomic_directory(path, overwrite) as tmp:
            yield tmp
    except FileExistsError as exc:
        if exc.filename is None and str(path) in str(exc):
            raise SamkitError(str(exc)) from None
        raise


def _check_fiftyone_app(family: FamilyExport, parts: tuple[str, ...], options: ExportOptions) -> None:
    """The FiftyOne App runs SAM 2's encoder and its default decoder (three masks, any point count)."""
    if family.name != "sam2":
        raise SamkitError(
            f"fiftyone_app: the FiftyOne App's in-browser segmentation runs SAM 2 / 2.1 exports, not {family.name!r}"
        )
    if set(parts) != {"encoder", "decoder"}:
        raise SamkitError("fiftyone_app: the App downloads both the encoder and the decoder; export both parts")
    if options.single_mask or not options.dynamic_points:
        raise SamkitError("fiftyone_app: the App's worker needs the default decoder (three masks, any point count)")


def _require_onnx_packages(quantize: bool, fiftyone_app: bool = False) -> None:
    missing = []
    for module in ("onnx", "onnxscript") + (("onnxruntime",) if quantize or fiftyone_app else ()):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SamkitError(
            f"ONNX export needs {', '.join(missing)}, which is not installed: pip install \"samkit[onnx]\""
        )


def _cpu_float32(model: Any) -> Any:
    """The model on the CPU in float32 (graphs are exported in float32 whatever the model runs in).
    A model elsewhere is copied, never moved: the caller's model stays where it is."""
    import copy

    import torch

    params = list(model.parameters())
    on_cpu = all(p.device.type == "cpu" for p in params)
    if on_cpu and all(p.dtype == torch.float32 for p in params if p.is_floating_point()):
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def _export_graph(graph: Graph, path: Path, opset: int | None, torch: Any) -> int:
    """Trace graph.module with torch.export and write it as ONNX; returns the file's opset.

    torch 2.13's dynamo exporter (torch.export + onnxscript), not the legacy TorchScript one:
    SAM's decoder crops and resizes its masks to sizes computed from the orig_im_size *values*.
    The TorchScript tracer records `int(tensor)` / `.item()` as constants, so its graph crops
    every image as the example it was traced with (the official SamOnnxModel exported today gives
    wrong masks for any other aspect ratio) and drops orig_im_size from the inputs; torch.export
    keeps them as symbolic sizes with the bounds the module states (torch._check).
    """
    names = list(graph.inputs)
    dims: dict[str, Any] = {}
    dynamic_shapes = {}
    for name in names:
        axes = graph.dynamic_axes.get(name)
        if not axes:
            dynamic_shapes[name] = None
            continue
        spec = {}
        for axis, dim_name in axes.items():
            if dim_name not in dims:
                dims[dim_name] = torch.export.Dim(dim_name, min=1, max=65536)
            spec[axis] = dims[dim_name]
        dynamic_shapes[name] = spec
    size = sum(p.numel() * p.element_size() for p in graph.module.parameters())
    size += sum(b.numel() * b.element_size() for b in graph.module.buffers())
    module = graph.module.eval()
    try:
        context = graph.context() if graph.context is not None else contextlib.nullcontext()
        with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter(), context:
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                tuple(graph.inputs.values()),
                dynamo=True,
                input_names=names,
                output_names=list(graph.output_names),
                dynamic_shapes=dynamic_shapes if dims else None,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter's own messages are pages long
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SamkitError(f"torch.onnx could not export the {path.stem}: {first}") from exc
    written = _opset_of(program.model_proto)
    if opset is not None and written != opset:
        raise SamkitError(f"the exporter wrote opset {written} instead of the {opset} asked for; use opset={written}")
    _strip_trace_metadata(program.model)
    program.save(str(path), external_data=size > EXTERNAL_DATA_BYTES)
    return written


def _strip_trace_metadata(model: Any) -> None:
    """Drop what the exporter records per node and value for debugging: the Python stack trace
    (with this machine's source paths), the FX node and module names. A file that is shared or
    served to a browser should not carry the exporting machine's paths, and they add nothing at
    inference."""
    model.graph.metadata_props.clear()
    values = [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]
    for graph in (model.graph, *model.functions.values()):
        for node in graph.all_nodes():
            node.metadata_props.clear()
            values.extend(node.outputs)
    for value in values:
        value.metadata_props.clear()


class _quiet_exporter:
    """The dynamo exporter prints its progress ("[torch.onnx] Obtain model graph ...") to stdout
    and torch.export logs warnings about optional torchvision ops: neither is the user's concern."""

    def __enter__(self) -> None:
        import contextlib
        import io
        import logging

        self._loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._redirect.__exit__(*exc)
        for lg, level in zip(self._loggers, self._levels):
            lg.setLevel(level)


def _opset_of(proto: Any) -> int:
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def _io_description(path: Path) -> dict[str, Any]:
    """Input and output names, element types and shapes (symbolic axes by name) of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> dict[str, Any]:
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out[value.name] = {"dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _quantize(source: Path, target: Path) -> None:
    """int8 dynamic quantisation (weights uint8, activations quantised at run time), as the official
    SAM export script does it (QUInt8, per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporter():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, per_channel=False)


def _source(model: Any, source_name: Any) -> dict[str, Any]:
    """What the graphs were exported from: the checkpoint file and its SHA-256, or, for a model
    that came from no file (built or trained in memory), the SHA-256 of its state_dict."""
    checkpoint = getattr(model, "checkpoint_path", None)
    if checkpoint and Path(checkpoint).is_file():
        digest = hashlib.sha256()
        with open(checkpoint, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return {"checkpoint": str(checkpoint), "sha256": digest.hexdigest(), "given_as": source_name}
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"checkpoint": None, "state_dict_sha256": digest.hexdigest()}


def _samkit_version() -> str:
    from .. import __version__

    return __version__
