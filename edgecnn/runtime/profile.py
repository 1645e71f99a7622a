"""`edgecnn bench --profile`: where the time goes, per op and per layer, in .onnx and .tflite files.

- .onnx: onnxruntime's own profiler (`SessionOptions.enable_profiling`): the
  Chrome-trace JSON it writes holds one "Node" event per executed kernel and run,
  with its duration (µs), op type and input/output shapes. Warm-up runs are dropped.
- .tflite: LiteRT's Python interpreter exposes no op profiler (ai-edge-litert 2.3:
  no profiling method on `Interpreter` or `CompiledModel`), and its wheel ships no
  `benchmark_model` binary (only `tools/apply_plugin_main`). So each operator is
  timed in isolation instead, the way TVM's per-op measurement does it: a one-op
  model is cut out of the file (its non-constant inputs become the model's inputs,
  its weights kept, `schema_py_generated` from ai-edge-litert and flatbuffers),
  run on LiteRT with random inputs of the right type, and timed like `bench` times
  a model. The whole model's time (`whole_run_us`) is reported beside the sum
  of the ops (`total_us`): the sum includes one invoke overhead per op, and an
  op alone runs with its input in cache.

Layers: the files carry no torch module names (the ONNX exporter's node names
are "node_conv2d_3", and onnxruntime renames fused nodes), so a layer is named
after its compute op in graph order ("07 pw 32→64", "08 dw 3x3 s2 64"): every
Conv / depthwise conv / fully connected op starts a layer, and the ops after it
(activation, Add, Quantize/Transpose reorders, pooling) are counted with it.
fp32 and int8 files of one model then list the same layers in the same order,
so they are compared layer by layer.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.runtime.bench_worker import time_runs
from edgecnn.util import require_file

_CONV = {"Conv", "QLinearConv", "FusedConv", "ConvInteger", "NhwcFusedConv", "CONV_2D",
         "DEPTHWISE_CONV_2D"}
_FC = {"Gemm", "QGemm", "MatMul", "QLinearMatMul", "MatMulInteger", "FusedGemm",
       "FULLY_CONNECTED"}


@dataclass
class OpTime:
    """One executed operator: mean time per run in microseconds, and the layer it belongs to."""

    index: int
    name: str
    op: str
    us: float
    layer: str = ""
    kind: str = ""  # conv | dw | pw | fc for compute ops, "" for the others


def _conv_label(op: str, x: list[int], w: list[int] | None, y: list[int], nhwc: bool) -> str:
    """"dw 3x3 s2 32", "pw 32→64", "conv 3x3 s2 3→32", "fc 1280→1000" from the shapes."""
    if op in _FC:
        cin = x[-1] if x else "?"
        return f"fc {cin}→{y[-1] if y else '?'}"
    cin, cout = (x[-1], y[-1]) if nhwc else (x[1], y[1])
    hin, hout = (x[1], y[1]) if nhwc else (x[2], y[2])
    stride = max(1, round(hin / hout)) if hout else 1
    s = f" s{stride}" if stride > 1 else ""
    if w is None:  # int8 ONNX: onnxruntime prepacks the weight and does not show it
        k, depthwise = None, False
    elif op == "DEPTHWISE_CONV_2D":
        k, depthwise = w[1], True
    elif op == "CONV_2D":
        k, depthwise = w[1], False
    else:  # ONNX weights [out, in/group, kh, kw]
        k, depthwise = w[2], w[1] == 1 and cin == cout and cin > 1
    if depthwise:
        return f"dw {k}x{k}{s} {cin}"
    if k == 1:
        return f"pw{s} {cin}→{cout}"
    return f"conv{'' if k is None else f' {k}x{k}'}{s} {cin}→{cout}"


def assign_layers(ops: list[OpTime], labels: dict[int, str]) -> list[OpTime]:
    """Number the compute ops (`labels`: op index -> label) and attach the others to them."""
    current, n = "input", 0
    for op in ops:
        if op.index in labels:
            current = f"{n:02d} {labels[op.index]}"
            op.kind = labels[op.index].split()[0]
            n += 1
        op.layer = current
    return ops


# --- onnxruntime ------------------------------------------------------------------------------

def _shape(entry: dict) -> list[int]:
    return next(iter(entry.values())) if entry else []


def _onnx_weight_shapes(path: Path) -> dict[str, list[int]]:
    """Conv node name -> weight shape, read with `onnx` when it is installed (it is not part
    of the base package): onnxruntime's profile omits the prepacked int8 weights."""
    try:
        import onnx
    except ImportError:
        return {}
    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = {}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvInteger") and len(node.input) > 1:
            name = node.input[1]
            while name not in shapes and name in producer and producer[name].input:
                name = producer[name].input[0]  # through DequantizeLinear
            if name in shapes:
                found[node.name] = shapes[name]
    return found


def profile_onnx(path: Path, runs: int = 50, warmup: int = 10,
                 threads: int | None = 1) -> tuple[list[OpTime], float | None]:
    """Median µs per node over `runs` profiled runs (after `warmup`), in execution order,
    and the median µs of a whole run (the profiler's "model_run" events)."""
    import onnxruntime as ort

    from edgecnn.runtime.session import open_session

    session = open_session(path, "onnxruntime", threads=threads)
    feed = session.random_input(1)
    with tempfile.TemporaryDirectory(prefix="edgecnn-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        if threads:
            options.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(warmup + runs):
            sess.run(None, {name: feed})
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    whole = [float(e["dur"]) for e in events
             if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"].removesuffix("_kernel_time")
            durations.setdefault(node, []).append(float(e["dur"]))
            info.setdefault(node, e["args"])
    ops, labels, weights = [], {}, _onnx_weight_shapes(path)
    for i, (node, times) in enumerate(durations.items()):
        args = info[node]
        kept = times[warmup:] if len(times) > warmup else times
        op = args.get("op_name", "?")
        ops.append(OpTime(i, node, op, statistics.median(kept)))
        if op in _CONV | _FC:
            inputs = args.get("input_type_shape", [])
            x = _shape(inputs[0]) if inputs else []
            w = _shape(inputs[1]) if op not in ("QLinearConv", "QGemm") and len(inputs) > 1 \
                else weights.get(re.sub(r"_token_\d+$", "", node))
            y = _shape(args.get("output_type_shape", [{}])[0])
            nhwc = op == "QLinearConv" or "nhwc" in node.lower()
            if op == "QLinearConv" and len(x) == 4 and x[1] != x[2] and x[2] == x[3]:
                nhwc = False  # NCHW kept (the layout transformer did not run)
            labels[i] = _conv_label(op, x, w, y, nhwc)
    return assign_layers(ops, labels), statistics.median(whole) if whole else None


# --- LiteRT: one-op models --------------------------------------------------------------------

def _schema():
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:
        raise EdgecnnError(f"profiling .tflite files needs ai-edge-litert and flatbuffers "
                           f"(pip install 'edgecnn[tflite]'): {exc}") from None
    return schema, flatbuffers


def _op_names(schema) -> dict[int, str]:
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def single_op_model(model, index: int, schema, flatbuffers) -> bytes:
    """The flatbuffer of a model holding only operator `index` of subgraph 0."""
    import copy

    graph = model.subgraphs[0]
    op = copy.copy(graph.operators[index])
    used = [t for t in [*op.inputs, *op.outputs] if t >= 0]
    order = list(dict.fromkeys(used))
    remap = {old: new for new, old in enumerate(order)}
    buffers, tensors = [schema.BufferT()], []
    for old in order:
        tensor = copy.copy(graph.tensors[old])
        data = model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is not None and len(data):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    constant = {remap[t] for t in used if tensors[remap[t]].buffer}
    op.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
    op.outputs = [remap[t] for t in op.outputs]
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = tensors, [op]
    sub.inputs = [t for t in dict.fromkeys(op.inputs) if t >= 0 and t not in constant]
    sub.outputs = list(op.outputs)
    out = schema.ModelT()
    out.version, out.operatorCodes, out.buffers = model.version, model.operatorCodes, buffers
    out.subgraphs, out.description = [sub], b"edgecnn profile"
    builder = flatbuffers.Builder(1024)
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _random(detail: dict, rng: np.random.Generator) -> np.ndarray:
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, detail["shape"],
                            dtype=dtype)
    return rng.standard_normal(detail["shape"]).astype(dtype)


def profile_tflite(path: Path, runs: int = 50, warmup: int = 10,
                   threads: int | None = 1) -> tuple[list[OpTime], float | None]:
    """Median µs of each operator run alone on LiteRT (see the module docstring), and the
    median µs of the whole model's invoke, timed the same way."""
    from edgecnn.runtime.backends.tflite import interpreter as open_interpreter

    schema, flatbuffers = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise EdgecnnError(f"{path}: corrupt or truncated TFLite model ({exc})") from None
    names, rng = _op_names(schema), np.random.default_rng(0)
    graph = model.subgraphs[0]
    ops, labels = [], {}
    for i, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        interpreter = open_interpreter(single_op_model(model, i, schema, flatbuffers),
                                       threads=threads, name=f"{path} op {i} ({kind})")
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _random(detail, rng))
        timings = time_runs(interpreter.invoke, runs=runs, rewarm=warmup)
        ops.append(OpTime(i, f"{kind}#{i}", kind, float(np.median(timings)) / 1e3))
        if kind in _CONV | _FC:
            shape = [list(graph.tensors[t].shape) for t in op.inputs[:2]]
            y = list(graph.tensors[op.outputs[0]].shape)
            labels[i] = _conv_label(kind, shape[0], shape[1], y, nhwc=True)
    interpreter = open_interpreter(path, threads=threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _random(detail, rng))
    whole = float(np.median(time_runs(interpreter.invoke, runs=runs, rewarm=warmup))) / 1e3
    return assign_layers(ops, labels), whole


# --- reports ----------------------------------------------------------------------------------

def profile_file(path: Path, runs: int = 50, warmup: int = 10, threads: int | None = 1) -> dict:
    """The per-op profile of one artifact, JSON-able: every op, and the totals."""
    path = require_file(path)
    if path.suffix == ".onnx":
        (ops, whole), method = profile_onnx(path, runs, warmup, threads), "onnxruntime profiler"
    elif path.suffix == ".tflite":
        (ops, whole), method = profile_tflite(path, runs, warmup, threads), "LiteRT, each op alone"
    else:
        raise EdgecnnError(f"{path}: --profile reads .onnx and .tflite files, not {path.suffix}")
    return {"artifact": str(path), "name": path.name, "method": method, "threads": threads,
            "runs": runs, "total_us": sum(o.us for o in ops), "whole_run_us": whole,
            "ops": [asdict(o) for o in ops]}


def by_layer(profile: dict) -> dict[str, float]:
    """µs per layer, in graph order."""
    layers: dict[str, float] = {}
    for op in profile["ops"]:
        layers[op["layer"]] = layers.get(op["layer"], 0.0) + op["us"]
    return layers


def by_kind(profile: dict) -> dict[str, float]:
    """Fraction of the total time per layer kind (dw, pw, conv, fc; "input" before the first
    compute op), each layer's ops counted with its compute op."""
    kind_of = {op["layer"]: op["kind"] for op in profile["ops"] if op["kind"]}
    shares: dict[str, float] = {}
    for op in profile["ops"]:
        kind = kind_of.get(op["layer"], "input")
        shares[kind] = shares.get(kind, 0.0) + op["us"]
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def compare_layers(base: dict, other: dict) -> list[dict]:
    """Layer by layer, `base` (fp32) against `other` (int8): µs each and the speed-up.

    Layers are matched by their number ("input" with "input"); a pair whose kinds
    differ is reported with `matched` False (the files are not the same model).
    """
    def keyed(profile: dict) -> dict[str, tuple[str, float]]:
        return {layer.split()[0]: (layer, us) for layer, us in by_layer(profile).items()}

    def unknown_kernel(label: str) -> bool:  # int8 ONNX read without the onnx package
        return label.split()[1:2] == ["conv"] and "x" not in label.split()[2]

    a, b = keyed(base), keyed(other)
    rows = []
    for key in sorted(dict.fromkeys([*a, *b]), key=lambda k: (k != "input", k)):
        la, ta = a.get(key, ("–", None))
        lb, tb = b.get(key, ("–", None))
        matched = ("–" in (la, lb) or la.split()[1:2] == lb.split()[1:2]
                   or unknown_kernel(la) or unknown_kernel(lb))
        rows.append({"layer": la if la != "–" and not unknown_kernel(la) else lb,
                     "other_layer": lb, "base_us": ta, "other_us": tb,
                     "speedup": ta / tb if ta and tb else None, "matched": matched})
    return rows


def pairs(profiles: list[dict]) -> list[tuple[dict, dict]]:
    """(base, other) per file format: the first file of each suffix against the later ones."""
    firsts: dict[str, dict] = {}
    result = []
    for prof in profiles:
        suffix = Path(prof["name"]).suffix
        if suffix in firsts:
            result.append((firsts[suffix], prof))
        else:
            firsts[suffix] = prof
    return result


def comparisons(profiles: list[dict]) -> list[dict]:
    """`compare_layers` of every (base, other) pair of `pairs`, JSON-able."""
    return [{"base": base["name"], "other": other["name"], "layers": compare_layers(base, other)}
            for base, other in pairs(profiles)]


def plot_layers(profiles: list[dict], out: Path) -> bool:
    """Bars of µs per layer, one series per file; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keyed = [{layer.split()[0]: (layer, us) for layer, us in by_layer(p).items()}
             for p in profiles]
    keys = list(dict.fromkeys(k for times in keyed for k in times))
    layers = [next(t[k][0] for t in keyed if k in t) for k in keys]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(layers) * len(profiles)), 4.5))
    width = 0.8 / len(profiles)
    for i, (prof, times) in enumerate(zip(profiles, keyed, strict=True)):
        values = [times.get(k, ("", 0.0))[1] for k in keys]
        ax.bar([x + i * width for x in range(len(values))], values, width, label=prof["name"])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(layers))])
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_ylabel("µs per run")
    ax.set_title("time per layer (edgecnn bench --profile)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    from edgecnn.util import atomic_write

    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True
