"""PyTorch -> ONNX: fp32 and int8 QDQ models, simplified, checked, with metadata.

Opset 18 (the dynamo exporter's native opset; per-channel QDQ needs >= 13 and
ReduceMean takes axes as an input from 18 on), and 21 for a program with int16
layers (`--int16`: QuantizeLinear / DequantizeLinear take int16 in the standard
domain from opset 21 on; onnxruntime runs them, and a Conv between int16 Q/DQ in
float). The batch dimension is dynamic.

Int8 models keep the QDQ structure: int8 weight initializers behind
DequantizeLinear (per channel, axis 0), int32 bias, one Q/DQ pair per
activation. onnxruntime fuses DQ -> Conv -> Q into QLinearConv; which
activation type reaches its fast path depends on the CPU, so it is an option
(`activations`): uint8 activations are exactly the int8 grid shifted by 128,
so the same QAT/PTQ result exports faithfully either way. Global average pools
become GlobalAveragePool (fused to QLinearGlobalAveragePool, where a ReduceMean
runs in float), and the image's channels are zero-padded to 4 for the stem
convolution's sake (`onnx_passes`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from onnx import TensorProto

from edgecnn.config import METADATA_KEY, ArtifactMetadata, Preprocessing
from edgecnn.errors import EdgecnnError, ParameterError, first_line
from edgecnn.export.onnx_passes import (
    INPUT_CHANNEL_MULTIPLE,
    float_layers_per_axis_input,
    global_average_pools,
    pad_input_channels,
    uint8_activations,
)
from edgecnn.export.tflite.passes.islands import FLOAT_WEIGHTS_KEY
from edgecnn.util import atomic_write

OPSET = 18
#: the first opset whose QuantizeLinear / DequantizeLinear take int16 (16x8 layers)
INT16_OPSET = 21
ACTIVATION_TYPES = ("uint8", "int8")
#: Measured on AVX2 x86 without VNNI: onnxruntime's fast int8 path is U8S8 (see benchmarks/).
DEFAULT_ACTIVATIONS = "uint8"


def to_onnx(module: torch.nn.Module, example_input: torch.Tensor,
            opset: int = OPSET) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) at `opset` with a dynamic batch dimension named `batch`.
    Tensors are named after the torch graph's nodes, as they were before the exporter's
    decomposition renumbered some (`source_names`)."""
    if example_input.shape[0] < 2:
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    if not isinstance(module, torch.export.ExportedProgram):
        module = torch.export.export(
            module, (example_input,),
            dynamic_shapes=({0: torch.export.Dim("batch", max=65536)},))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example_input,), dynamo=True,
                                        opset_version=opset, verbose=False,
                                        input_names=["input"], output_names=["logits"])
    except Exception as exc:  # noqa: BLE001 - any exporter failure, reported by node and op
        raise EdgecnnError(f"ONNX export failed: {describe_export_error(exc, opset)}") from exc
    proto = program.model_proto
    if getattr(program, "exported_program", None) is not None:
        rename_values(proto, source_names(program.exported_program))
    name_anonymous_nodes(proto)
    name_batch_dimension(proto)
    return proto


def name_anonymous_nodes(proto: onnx.ModelProto) -> None:
    """Name the nodes the exporter left unnamed or numbered (`n0`: an op of an inlined
    decomposition, amax's ReduceMax) `node_<output>`, after the tensor they write (which
    keeps the torch program's name), so errors name what `--keep-float` selects; in
    place, a name already taken left alone."""
    taken = {node.name for node in proto.graph.node}
    for node in proto.graph.node:
        if (not node.name or re.fullmatch(r"n\d+", node.name)) and node.output \
                and f"node_{node.output[0]}" not in taken:
            node.name = f"node_{node.output[0]}"
            taken.add(node.name)


def name_batch_dimension(proto: onnx.ModelProto, name: str = "batch") -> None:
    """Rename the input's symbolic batch dimension (torch's symbol, `s77`) to `name`
    wherever a shape uses it, in place."""
    dims = [d for v in proto.graph.input[:1] for d in v.type.tensor_type.shape.dim[:1]]
    symbol = dims[0].dim_param if dims and dims[0].HasField("dim_param") else None
    if not symbol:
        return
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param == symbol:
                dim.dim_param = name


def source_names(exported: torch.export.ExportedProgram) -> dict[str, str]:
    """{node name after the exporter's decomposition: its name before} for the nodes it
    renumbered: decomposing the graph renames every node, and an op that other ops'
    decompositions also emit takes a later number (a residual add `add` -> `add_55`).
    Only a node with its source's op, one per source. The name before is the torch
    program's: what `--int16` / `--keep-float` select, `precision.int16_capable_ops` and
    `float_islands` report, and, once the ONNX tensor carries it, `edgecnn inspect` and
    `--fallback` (`fallback.rank_groups`) too."""
    names = {node.name for node in exported.graph.nodes}
    renamed = {}
    for node in exported.graph.nodes:
        source = (node.meta.get("from_node") or [None])[-1]
        if (node.op == "call_function" and source is not None and source.name not in names
                and source.target == str(node.target)):
            renamed[node.name] = source.name
    claims = Counter(renamed.values())
    return {new: old for new, old in renamed.items() if claims[old] == 1}


def rename_values(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename the graph's tensors (node outputs and initializers the exporter folded
    them into; their nodes, `node_<tensor>`) by `names`, in place; a name some tensor
    already has is left alone."""
    graph = proto.graph
    taken = {*(v for n in graph.node for v in [*n.input, *n.output]),
             *(i.name for i in [*graph.input, *graph.initializer])}
    names = {new: old for new, old in names.items() if old not in taken}
    if not names:
        return
    for node in graph.node:
        for values in (node.input, node.output):
            renamed = [names.get(v, v) for v in values]
            del values[:]
            values.extend(renamed)
        if node.name.startswith("node_") and node.name[5:] in names:
            node.name = f"node_{names[node.name[5:]]}"
    for value in [*graph.initializer, *graph.value_info, *graph.output]:
        value.name = names.get(value.name, value.name)


def describe_export_error(exc: BaseException, opset: int = OPSET) -> str:
    """Name the graph node and the aten op the exporter could not translate."""
    seen: BaseException | None = exc
    while seen is not None:
        match = re.search(r"translating node %(\S+) .*?target=(?:torch\.ops\.)?([\w.]+)",
                          str(seen))
        if match:
            return (f"node {match.group(1)!r} (op {match.group(2)}) has no ONNX translation "
                    f"at opset {opset}")
        seen = seen.__cause__ or seen.__context__
    return first_line(exc)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim, then a check that QDQ models kept their int8 weights behind DequantizeLinear."""
    import onnxsim

    before = _int8_weight_count(model)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise EdgecnnError("onnxsim could not validate the simplified model")
    if _int8_weight_count(simplified) < before:
        raise EdgecnnError("simplification folded int8 weights back to float")
    return simplified


def _int8_weight_count(model: onnx.ModelProto) -> int:
    inits = {i.name for i in model.graph.initializer
             if i.data_type == TensorProto.INT8 and len(i.dims) >= 2}
    return sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits)


def attach_metadata(model: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Full onnx.checker check, then write atomically (a failure leaves no file)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgecnnError(f"{path}: the exported model fails onnx.checker: "
                           f"{first_line(exc)}") from None
    with atomic_write(Path(path)) as tmp:
        onnx.save(model, tmp)
    return Path(path)


def fp32_model(model: torch.nn.Module, preprocessing: Preprocessing, *,
               model_name: str = "") -> onnx.ModelProto:
    """The fp32 ONNX of an nn.Module (BN folded by the exporter), the record attached."""
    proto = simplify(to_onnx(model.eval(), _example_input(preprocessing)))
    attach_metadata(proto, ArtifactMetadata(preprocessing.with_layout("NCHW"), model=model_name,
                                            precision="fp32"))
    return proto


def export_fp32(model: torch.nn.Module, preprocessing: Preprocessing, path: Path, *,
                model_name: str = "") -> Path:
    """Write `fp32_model` to `path`."""
    return save(fp32_model(model, preprocessing, model_name=model_name), path)


def qdq_model(program: torch.nn.Module, preprocessing: Preprocessing, *,
              model_name: str = "") -> onnx.ModelProto:
    """The canonical int8 QDQ ONNX of a converted PT2E program (explicit Q/DQ): int8
    activations, the image's own channels, global means as GlobalAveragePool (the
    standard op for them, which both onnxruntime and the TFLite converter take); NCHW,
    batch dynamic, the artifact record attached. The hub: the TFLite converter reads
    this, and `onnxruntime_variant` tunes a copy of it for onnxruntime."""
    opset = INT16_OPSET if has_int16(program) else OPSET
    proto = global_average_pools(simplify(to_onnx(program, _example_input(preprocessing),
                                                  opset)))
    attach_metadata(proto, ArtifactMetadata(
        preprocessing.with_layout("NCHW"), model=model_name, precision="int8",
        extra={"activations": "int8", FLOAT_WEIGHTS_KEY: "float"}))
    return proto


def onnxruntime_variant(canonical: onnx.ModelProto, *, activations: str = DEFAULT_ACTIVATIONS,
                        pad_channels: int = INPUT_CHANNEL_MULTIPLE) -> onnx.ModelProto:
    """The canonical QDQ model tuned for onnxruntime's CPU kernels (a new model; the
    canonical one is not modified): `activations` "uint8" re-encodes every activation
    on the same grid shifted by 128 (U8S8, the fast path without VNNI), the image's
    channels are zero-padded to `pad_channels` for the stem convolution (exact; 1 turns
    it off; see `onnx_passes.pad_input_channels`), and float layers read a per-axis
    DequantizeLinear (`onnx_passes.float_layers_per_axis_input`). Raises ParameterError for an
    unknown `activations`."""
    if activations not in ACTIVATION_TYPES:
        raise ParameterError("activations", f"{activations!r} is unknown; known: "
                             f"{', '.join(ACTIVATION_TYPES)}")
    proto = uint8_activations(canonical) if activations == "uint8" else canonical
    proto = float_layers_per_axis_input(pad_input_channels(proto, pad_channels))
    record = ArtifactMetadata.from_json(next(p.value for p in proto.metadata_props
                                             if p.key == METADATA_KEY))
    attach_metadata(proto, dataclasses.replace(
        record, extra={**record.extra, "activations": activations}))
    return proto


def export_qdq(program: torch.nn.Module, preprocessing: Preprocessing, path: Path, *,
               model_name: str = "", activations: str = DEFAULT_ACTIVATIONS,
               pad_channels: int = INPUT_CHANNEL_MULTIPLE) -> Path:
    """Write the int8 QDQ ONNX that ships (`onnxruntime_variant` of `qdq_model`) to `path`."""
    canonical = qdq_model(program, preprocessing, model_name=model_name)
    return save(onnxruntime_variant(canonical, activations=activations,
                                    pad_channels=pad_channels), path)


def has_int16(program: torch.nn.Module) -> bool:
    """True when a converted program quantizes some activation to int16 (16x8 layers)."""
    module = getattr(program, "graph_module", program)
    graph = getattr(module, "graph", None)
    return graph is not None and any(
        n.op == "call_function" and "quantize_per_tensor" in str(n.target)
        and n.args[-1] == torch.int16 for n in graph.nodes)


def _example_input(preprocessing: Preprocessing) -> torch.Tensor:
    h, w = preprocessing.input_size
    return torch.randn(2, preprocessing.channels, h, w, generator=torch.Generator().manual_seed(0))


def runtime_op_counts(path: Path, optimized_path: Path) -> Counter:
    """Op types of the graph onnxruntime actually runs (its optimized model, saved to disk)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized_path)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(optimized_path)).graph.node)
