"""A seeded generator of damaged artifacts, and a runner that puts each through the real CLI.

    cases = generate(base, out_dir, seed=0, count=300)   # base: see `BASE_FILES`
    results = run_cases(cases)                           # [(case, Outcome), ...]

`base` is a directory of real, good artifacts of one small model (fp32/int8
ONNX and .tflite, the quantized .pt2, a checkpoint directory, the validation
split as npz). Each case is one damaged file (or directory) and one command
line (`validate`, `bench`, `convert`, `export`) that reads it.

The runner is a fork server: one subprocess imports the CLI and the runtimes
once, then forks a child per case that calls `edgecnn.cli.main()` with the
case's argv, exactly as the console script does, with stdout and stderr
captured. The parent sees the exit code or the signal the child died of, and
kills a child that runs longer than the time limit (a hang). This is what
makes a few hundred cases fit in about a minute on two cores.

Allowed outcomes: exit 0, exit 1 (a gate failed), exit 2 with exactly one
line on stderr, which starts with "error:". Everything else (a traceback, a
signal, a hang, a noisy exit 2, a file the payload created) is a finding.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

#: What `generate` expects in `base`.
BASE_FILES = ("model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite",
              "model_int8.pt2", "checkpoint", "val.npz")

ALLOWED = ("exit 0", "exit 1", "exit 2")


@dataclass(frozen=True)
class Case:
    """One damaged input and the command that reads it (argv after `edgecnn`)."""

    name: str
    kind: str  # tflite | onnx | sidecar | npz | checkpoint | pt2
    argv: tuple[str, ...]
    marker: str = ""  # a file a pickle payload would create; its existence is a finding
    torch: bool = False
    must_refuse: bool = False  # invalid by the format's rules: only exit 2 is right


# --- mutations ------------------------------------------------------------------------------

def _bitflip(data: bytes, rng: random.Random, flips: int) -> bytes:
    raw = bytearray(data)
    for _ in range(flips):
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
    return bytes(raw)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    i = rng.randrange(max(1, len(raw) - 8))
    value = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", struct.pack("<f", float("nan")),
                        struct.pack("<f", -1.0), struct.pack("<i", 2**31 - 1),
                        struct.pack("<f", float("inf"))])
    raw[i:i + 4] = value
    return bytes(raw)


def _raw(data: bytes, rng: random.Random) -> bytes:
    how = rng.choice(("flip", "flip", "truncate", "overwrite"))
    if how == "flip":
        return _bitflip(data, rng, rng.choice((1, 2, 8, 64)))
    if how == "truncate":
        return _truncate(data, rng)
    return _overwrite(data, rng)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


#: Bad values for a metadata field, by field.
_BAD_META = {
    "input_size": [[0, 0], [20000, 20000], [-1, 32], "32", [32], [1e9, 1], None, [32.5, 32]],
    "channels": [0, 2, -1, "1", 1e9, None, True],
    "mean": [[], [float("nan")], "x", [1, 2, 3, 4], None],
    "std": [[0], [-1], [float("inf")], [], None],
    "class_names": [[], ["a"], "abc", [None] * 10, list(range(100000)), 7],
    "layout": ["NCWH", 3, None, ""],
}
_BAD_RECORD = {"precision": [3, None, "int4", []], "model": [7, [], None],
               "input_quant": [{"scale": float("nan"), "zero_point": 0},
                               {"scale": -1, "zero_point": 0},
                               {"scale": 0.1, "zero_point": 1000}, "x", [1, 2],
                               {"scale": "a", "zero_point": 0}],
               "output_quant": [{"scale": 0, "zero_point": 0}, {"scale": 1e-3}, 5],
               "extra": ["x", 3, None]}


def _bad_record(record: dict, rng: random.Random) -> bytes:
    record = json.loads(json.dumps(record))
    choice = rng.randrange(8)
    if choice == 0:
        return rng.choice([b"\xff\xfe\x00garbage", b"", b"{", b"null", b'"a string"', b"[1, 2]",
                           b"3", _deep(2000).encode(), ("{\"a\": " * 3000).encode()])
    if choice <= 3:
        key = rng.choice(list(_BAD_META))
        value = rng.choice(_BAD_META[key])
        if value is None:
            record["preprocessing"].pop(key, None)
        else:
            record["preprocessing"][key] = value
    elif choice <= 6:
        key = rng.choice(list(_BAD_RECORD))
        value = rng.choice(_BAD_RECORD[key])
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    else:
        record["preprocessing"] = rng.choice(["x", [], None, 3, {}])
    return json.dumps(record).encode()


#: Values no runtime can run, by mutation: a case carrying one must be refused (exit 2).
_INVALID: set = set()


def _mark(value):
    _INVALID.add("hit")
    return value


def _tflite_mutant(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    from ai_edge_litert import schema_py_generated as schema

    from edgecnn.export.tflite.writer import FILE_IDENTIFIER

    how = rng.choice(("raw", "raw", "stride", "dilation", "depth", "scale", "zero_point",
                      "const_input", "shape", "opcode", "meta", "tensor_type", "buffer_size",
                      "io"))
    if how == "raw":
        return "raw", _raw(data, rng)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    graph = model.subgraphs[0]
    ops = graph.operators
    if how in ("stride", "dilation", "depth"):
        conv = [op for op in ops if op.builtinOptions is not None and hasattr(
            op.builtinOptions, "strideW")]
        op = rng.choice(conv)
        options = op.builtinOptions
        if how == "stride":
            setattr(options, rng.choice(("strideW", "strideH")), _mark(rng.choice((0, -1))))
        elif how == "dilation" and hasattr(options, "dilationWFactor"):
            setattr(options, rng.choice(("dilationWFactor", "dilationHFactor")),
                    _mark(rng.choice((0, -2))))
        elif hasattr(options, "depthMultiplier"):
            options.depthMultiplier = _mark(rng.choice((99, -1, 3)))
        else:
            options.strideW = _mark(0)
    elif how in ("scale", "zero_point"):
        quantized = [t for t in graph.tensors if t.quantization is not None
                     and t.quantization.scale is not None and len(t.quantization.scale)]
        if not quantized:
            return "raw", _raw(data, rng)
        tensor = rng.choice(quantized)
        q = tensor.quantization
        i = rng.randrange(len(q.scale))
        if how == "scale":
            q.scale = list(q.scale)
            q.scale[i] = _mark(rng.choice((float("nan"), 0.0, -0.5, float("inf"))))
        else:
            q.zeroPoint = list(q.zeroPoint if q.zeroPoint is not None else [0] * len(q.scale))
            q.zeroPoint[i] = rng.choice((300, -1000, 2**40))
            if tensor.type in (3, 9):  # UINT8 / INT8: out of range
                _mark(None)
    elif how == "const_input":
        tensor = graph.tensors[graph.inputs[0]]
        buffer = schema.BufferT()
        size = int(np.prod(tensor.shape)) * (1 if tensor.type in (9, 3) else 4)
        buffer.data = [0] * rng.choice((size, 4))
        _mark(None)
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1
    elif how == "shape":
        tensor = rng.choice(graph.tensors)
        if tensor.shape is not None and len(tensor.shape):
            tensor.shape = list(tensor.shape)
            tensor.shape[rng.randrange(len(tensor.shape))] = rng.choice((0, -5, 2**30, 7))
            if min(tensor.shape) < 1:
                _mark(None)
    elif how == "opcode":
        code = rng.choice(model.operatorCodes)
        code.builtinCode = rng.choice((0, 3, 4, 9, 22, 117, 200))
        code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        code.version = rng.choice((1, 99))
    elif how == "meta":
        index = model.metadata[0].buffer
        record = json.loads(bytes(model.buffers[index].data))
        model.buffers[index].data = list(_bad_record(record, rng))
    elif how == "tensor_type":
        tensor = rng.choice(graph.tensors)
        tensor.type = rng.choice((0, 1, 2, 3, 9, 17, 40))
    elif how == "buffer_size":
        with_data = [b for b in model.buffers if b.data is not None and len(b.data) > 4]
        buffer = rng.choice(with_data)
        buffer.data = list(buffer.data)[:rng.randrange(len(buffer.data))]
    elif how == "io":
        if rng.random() < 0.5:
            graph.outputs = [rng.choice((len(graph.tensors) + 3, graph.inputs[0]))]
        else:
            graph.inputs = []
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return how, bytes(builder.Output())


def _onnx_mutant(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    import onnx
    from onnx import numpy_helper

    how = rng.choice(("raw", "raw", "scale", "zero_point", "attr", "dtype", "output", "empty",
                      "drop_node", "meta", "shape", "init_shape"))
    if how == "raw":
        return "raw", _raw(data, rng)
    model = onnx.load_from_string(data)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if how in ("scale", "zero_point") and qdq:
        node = rng.choice(qdq)
        index = 1 if how == "scale" else 2
        name = node.input[index] if len(node.input) > index else None
        if name in inits:
            array = numpy_helper.to_array(inits[name]).copy()
            flat = array.reshape(-1)
            if how == "scale":
                flat[rng.randrange(flat.size)] = _mark(rng.choice((np.nan, 0.0, -0.25, np.inf)))
            else:
                dtype = array.dtype
                wider = array.astype(np.int32).reshape(-1)
                wider[rng.randrange(wider.size)] = rng.choice((300, -1000))
                array = wider.reshape(array.shape).astype(np.int32 if rng.random() < 0.5
                                                          else dtype)
            inits[name].CopyFrom(numpy_helper.from_array(array.reshape(array.shape), name))
        else:
            how = "attr"
    if how == "attr":
        convs = [n for n in graph.node if n.op_type in ("Conv", "AveragePool", "MaxPool", "Pad")]
        node = rng.choice(convs)
        attrs = [a for a in node.attribute if a.ints]
        if attrs:
            attr = rng.choice(attrs)
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice((0, -1, -7, 1000))
            if node.op_type != "Pad" and min(attr.ints) < (0 if attr.name == "pads" else 1):
                _mark(None)
        else:
            node.attribute.append(onnx.helper.make_attribute("strides", [0, 0]))
    elif how == "dtype":
        init = rng.choice(list(graph.initializer))
        init.data_type = rng.choice((1, 2, 3, 6, 7, 10, 11))
    elif how == "output":
        graph.output[0].name = rng.choice(("missing", graph.input[0].name, ""))
    elif how == "empty":
        del graph.node[:]
    elif how == "drop_node":
        del graph.node[rng.randrange(len(graph.node))]
    elif how == "meta":
        for prop in model.metadata_props:
            if prop.key == "edgecnn":
                prop.value = _bad_record(json.loads(prop.value), rng).decode("utf-8", "replace")
    elif how == "shape":
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[rng.randrange(1, len(dims))].dim_value = rng.choice((0, 1, 20000))
    elif how == "init_shape":
        init = rng.choice([i for i in graph.initializer if len(i.dims)])
        init.dims[rng.randrange(len(init.dims))] = rng.choice((0, 1, 3, 2**20))
    return how, model.SerializeToString()


def _npz_mutant(base: dict[str, np.ndarray], rng: random.Random) -> tuple[str, dict | bytes]:
    arrays = dict(base)
    x, y = arrays["x_val"], arrays["y_val"]
    how = rng.choice(("float01", "bool", "length", "labels", "strings", "zero_size", "names",
                      "empty", "missing", "float255", "nan_pixels", "ndim", "huge_label",
                      "bytes"))
    if how == "float01":
        arrays["x_val"] = x.astype(np.float32) / 255.0
    elif how == "float255":
        arrays["x_val"] = x.astype(np.float32)
    elif how == "nan_pixels":
        v = x.astype(np.float32) / 255.0
        v.reshape(-1)[rng.randrange(v.size)] = np.nan
        arrays["x_val"] = v
    elif how == "bool":
        arrays["x_val"] = x > 128
    elif how == "length":
        arrays["y_val"] = y[:rng.randrange(len(y))] if rng.random() < 0.5 else \
            np.concatenate([y, y[:5]])
        if rng.random() < 0.3:
            arrays["x_val"] = x.reshape(len(x), -1)[:1]
    elif how == "labels":
        y2 = y.astype(np.float64)
        y2[rng.randrange(len(y2))] = rng.choice((-1, np.nan, 2**40, 3.5, 11))
        arrays["y_val"] = y2 if rng.random() < 0.5 else y2.astype(np.int64) \
            if np.isfinite(y2).all() else y2
    elif how == "huge_label":
        y2 = y.astype(np.int64)
        y2[0] = rng.choice((2**40, 10**6, -2**40))
        arrays["y_val"] = y2
    elif how == "strings":
        arrays["x_val"] = np.asarray([["a"] * 4] * len(y))
    elif how == "zero_size":
        arrays["x_val"] = np.zeros((len(y), 0, 0), np.uint8)
    elif how == "names":
        arrays["class_names"] = rng.choice((np.asarray("x"), np.asarray([]), np.arange(3),
                                            np.asarray(["a"] * 10000)))
    elif how == "empty":
        arrays["x_val"], arrays["y_val"] = x[:0], y[:0]
    elif how == "missing":
        arrays.pop(rng.choice(("x_val", "y_val", "x", "y")))
    elif how == "ndim":
        arrays["x_val"] = x.reshape(-1) if rng.random() < 0.5 else x[..., None, None]
    elif how == "bytes":
        return how, b"bytes"
    return how, arrays


_PAYLOAD = """
class _Payload:
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (open, (self.marker, "w"))
"""


def _code_pickle(marker: str) -> bytes:
    namespace: dict = {}
    exec(_PAYLOAD, namespace)  # noqa: S102 - builds the malicious test object
    return pickle.dumps(namespace["_Payload"](marker), protocol=2)


def _replace_zip_entry(source: Path, target: Path, match: str, payload: bytes | None,
                       rng: random.Random) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if match in info.filename:
                data = payload if payload is not None else _raw(data, rng)
            zout.writestr(info, data)


def _pt2_mutant(source: Path, target: Path, rng: random.Random, marker: str) -> str:
    how = rng.choice(("sample_inputs", "weights", "weights_config", "model_json", "extra",
                      "raw"))
    if how == "raw":
        target.write_bytes(_raw(source.read_bytes(), rng))
    elif how == "sample_inputs":
        _replace_zip_entry(source, target, "sample_inputs", _code_pickle(marker), rng)
    elif how == "weights":
        _replace_zip_entry(source, target, "weights/weight_0", _code_pickle(marker), rng)
    elif how == "weights_config":
        with zipfile.ZipFile(source) as z:
            name = next(n for n in z.namelist() if n.endswith("weights_config.json"))
            config = json.loads(z.read(name))
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        with zipfile.ZipFile(source) as z:
            payload = {n: z.read(n) for n in z.namelist()}
        payload[name] = json.dumps(config).encode()
        payload[f"archive/data/weights/{config['config'][first]['path_name']}"] = \
            _code_pickle(marker)
        with zipfile.ZipFile(target, "w") as z:
            for n, d in payload.items():
                z.writestr(n, d)
    elif how == "model_json":
        _replace_zip_entry(source, target, "models/model.json", None, rng)
    else:
        record = json.loads(zipfile.ZipFile(source).read("archive/extra/edgecnn"))
        _replace_zip_entry(source, target, "extra/edgecnn", _bad_record(record, rng), rng)
    return how


def _checkpoint_mutant(source: Path, target: Path, rng: random.Random, marker: str) -> str:
    import torch

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    how = rng.choice(("ints", "strings", "dict", "nan", "raw", "code", "config", "shape"))
    weights = target / "checkpoint.pt"
    if how == "config":
        record = json.loads((target / "config.json").read_text())
        choice = rng.randrange(4)
        if choice == 0:
            (target / "config.json").write_bytes(rng.choice(
                (b"\xff\xfe", _deep(3000).encode(), b'"s"', b"[]")))
        elif choice == 1:
            record["options"] = rng.choice(("x", [1], {"num_classes": -3},
                                            {"width_mult": float("nan")},
                                            {"in_channels": 0}, {"bogus": 1}))
            (target / "config.json").write_text(json.dumps(record))
        else:
            (target / "config.json").write_bytes(
                _bad_record({"preprocessing": record["preprocessing"]}, rng))
        return how
    state = torch.load(weights, weights_only=True)
    if how == "ints":
        state = {k: 3 for k in state}
    elif how == "strings":
        state = {k: "x" for k in state}
    elif how == "dict":
        state = {"state": state}
    elif how == "nan":
        key = rng.choice([k for k, v in state.items() if v.is_floating_point()])
        state[key] = state[key].clone().fill_(float("nan"))
    elif how == "shape":
        key = rng.choice(list(state))
        state[key] = torch.zeros(3)
    if how == "raw":
        weights.write_bytes(_raw(weights.read_bytes(), rng))
    elif how == "code":
        weights.write_bytes(_code_pickle(marker))
    else:
        torch.save(state, weights)
    return how


# --- the generator --------------------------------------------------------------------------

#: Share of each kind in a generated set (torch-bound kinds are slow: a few percent).
WEIGHTS = {"tflite": 36, "onnx": 30, "sidecar": 12, "npz": 14, "pt2": 4, "checkpoint": 4}


def generate(base: Path, out: Path, *, seed: int, count: int,
             kinds: tuple[str, ...] | None = None) -> list[Case]:
    """`count` damaged inputs made from the good artifacts in `base`, with their commands."""
    rng = random.Random(seed)
    base, out = Path(base).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ref, npz = str(base / "model_fp32.onnx"), str(base / "val.npz")
    data = f"npz:{npz}"
    with np.load(base / "val.npz") as f:
        val = {k: f[k] for k in f.files}
    bare = out / "bare.onnx"  # the fp32 model without embedded metadata: reads a sidecar
    import onnx

    model = onnx.load(ref)
    del model.metadata_props[:]
    onnx.save(model, bare)
    record = json.loads(next(p.value for p in onnx.load(ref).metadata_props
                             if p.key == "edgecnn"))
    names, weights = zip(*[(k, w) for k, w in WEIGHTS.items() if not kinds or k in kinds],
                         strict=True)
    cases = []
    for n in range(count):
        kind = rng.choices(names, weights)[0]
        name = f"{n:04d}_{kind}"
        marker = str(out / f"{name}.PWNED")
        _INVALID.clear()
        if kind == "tflite":
            source = rng.choice(("model_int8.tflite", "model_fp32.tflite"))
            how, blob = _tflite_mutant((base / source).read_bytes(), rng)
            path = out / f"{name}_{how}.tflite"
            path.write_bytes(blob)
            if source == "model_fp32.tflite" or rng.random() < 0.3:
                shutil.copy(base / f"{source}.json", f"{path}.json")
            argv = rng.choice((("validate", "--reference", ref, "--candidate", str(path),
                                "--data", data),
                               ("bench", str(path), "--runs", "2", "--warmup", "0")))
        elif kind == "onnx":
            source = rng.choice(("model_int8.onnx", "model_fp32.onnx"))
            how, blob = _onnx_mutant((base / source).read_bytes(), rng)
            path = out / f"{name}_{how}.onnx"
            path.write_bytes(blob)
            argv = rng.choice((("validate", "--reference", ref, "--candidate", str(path),
                                "--data", data),
                               ("bench", str(path), "--runs", "2", "--warmup", "0"),
                               ("convert", str(path), "--out", str(out / f"{name}.tflite")),
                               ("convert", str(path), "--out", str(out / f"{name}.tflite"))))
        elif kind == "sidecar":
            path = out / f"{name}.onnx"
            shutil.copy(bare, path)
            how = "record"
            Path(f"{path}.json").write_bytes(_bad_record(record, rng))
            argv = rng.choice((("validate", "--reference", str(path), "--candidate",
                                str(base / "model_int8.tflite"), "--data", data),
                               ("bench", str(path), "--runs", "2", "--warmup", "0")))
        elif kind == "npz":
            how, arrays = _npz_mutant(val, rng)
            path = out / f"{name}_{how}.npz"
            if isinstance(arrays, bytes):
                path.write_bytes(arrays)
            else:
                np.savez(path, **arrays)
            argv = ("validate", "--reference", ref, "--candidate",
                    str(base / "model_int8.onnx"), "--data", f"npz:{path}")
        elif kind == "pt2":
            path = out / f"{name}.pt2"
            how = _pt2_mutant(base / "model_int8.pt2", path, rng, marker)
            argv = rng.choice((("bench", str(path), "--runs", "1", "--warmup", "0"),
                               ("validate", "--reference", ref, "--candidate", str(path),
                                "--data", data)))
        else:
            path = out / name
            how = _checkpoint_mutant(base / "checkpoint", path, rng, marker)
            argv = ("export", "dsc_net", "--checkpoint", str(path), "--formats", "onnx",
                    "--out", str(out / f"{name}_out"))
        cases.append(Case(f"{name}_{how}:{argv[0]}", kind, tuple(argv), marker,
                          torch=kind in ("pt2", "checkpoint"), must_refuse=bool(_INVALID)))
    return cases


# --- the runner -----------------------------------------------------------------------------

_SERVER = r'''
import json, os, signal, sys, time, traceback
preload = json.loads(sys.argv[1])
import importlib
import edgecnn.cli
for module in ("numpy", "onnx", "onnxruntime", "ai_edge_litert.interpreter",
               "tflite_runtime.interpreter", *preload):
    try:
        importlib.import_module(module)
    except ImportError:
        pass  # e.g. the Raspberry Pi stack: no onnx, no ai_edge_litert
for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1); os.dup2(err, 2)
        sys.argv = ["edgecnn", *case["argv"]]
        code = 0
        try:
            edgecnn.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + case["timeout"]
    status, hung = None, False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); hung = True
            break
        time.sleep(0.005)
    if hung:
        answer = {"hang": True}
    elif os.WIFSIGNALED(status):
        answer = {"signal": os.WTERMSIG(status)}
    else:
        answer = {"code": os.WEXITSTATUS(status)}
    print(json.dumps(answer), flush=True)
'''


def classify(answer: dict, stderr: str, marker: str = "") -> str:
    """The outcome of one run: "exit 0", "exit 1", "exit 2", or the finding's name."""
    if marker and Path(marker).exists():
        return "code executed"
    if answer.get("hang"):
        return "hang"
    if "signal" in answer:
        return f"signal {answer['signal']}"
    code = answer["code"]
    if "Traceback (most recent call last)" in stderr:
        return f"traceback (exit {code})"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 2:
        if len(lines) == 1 and lines[0].startswith("error:"):
            return "exit 2"
        return "exit 2, not one error: line"
    if code in (0, 1):
        return f"exit {code}"
    return f"exit {code}"


def run_cases(cases: list[Case], workdir: Path, *, timeout: float = 60.0,
              env: dict[str, str] | None = None, python: str = sys.executable,
              preload: tuple[str, ...] = ()) -> list[tuple[Case, str, str]]:
    """Run every case in a forked child of one server process; (case, outcome, stderr)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(env or os.environ)
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.setdefault("COLUMNS", "200")
    if any(c.torch for c in cases):
        preload = (*preload, "torch", "torchao.quantization.pt2e")
    server = subprocess.Popen([python, "-c", _SERVER, json.dumps(list(preload))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env, cwd=workdir)
    results = []
    try:
        for i, case in enumerate(cases):
            paths = {"stdout": str(workdir / f"{i}.out"), "stderr": str(workdir / f"{i}.err")}
            server.stdin.write(json.dumps({"argv": list(case.argv), "timeout": timeout,
                                           **paths}) + "\n")
            server.stdin.flush()
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"the fuzz server died at case {case.name}")
            stderr = Path(paths["stderr"]).read_text(errors="replace")
            results.append((case, classify(json.loads(line), stderr, case.marker), stderr))
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    return results


def tally(results: list[tuple[Case, str, str]]) -> dict[str, Counter]:
    """Outcome counts per (kind, command)."""
    table: dict[str, Counter] = {}
    for case, outcome, _ in results:
        table.setdefault(f"{case.kind} {case.argv[0]}", Counter())[outcome] += 1
    return table


def make_base(out: Path, *, epochs: int = 4) -> Path:
    """The good artifacts of a small dsc_net on digits (PTQ), as `generate` expects them."""
    from edgecnn.data import load, save_npz
    from edgecnn.pipeline import DEFAULT_TRAIN, export_int8
    from edgecnn.quant.recipe import PTQ
    from edgecnn.reference import Training

    work = out / "export"
    export_int8("dsc_net", reference=Training(replace(DEFAULT_TRAIN, epochs=epochs)),
                recipe=PTQ(), out=work, show_progress=False, bench_runs=2)
    base = out / "base"
    base.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES[:4]:
        shutil.copy(work / name, base / name)
        if Path(f"{work / name}.json").exists():
            shutil.copy(f"{work / name}.json", base / f"{name}.json")
    shutil.copy(work / "quantized" / "model_int8.pt2", base / "model_int8.pt2")
    shutil.copytree(work / "checkpoint", base / "checkpoint", dirs_exist_ok=True)
    save_npz(load("digits"), base / "val.npz", validation_only=True)
    return base


if __name__ == "__main__":  # python tests/fuzz_artifacts.py BASE OUT SEED COUNT
    base_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    cases = generate(base_dir, out_dir / "cases", seed=int(sys.argv[3]), count=int(sys.argv[4]))
    outcome = run_cases(cases, out_dir / "logs")
    for key, counts in sorted(tally(outcome).items()):
        print(f"{key:24s} {dict(counts)}")
    print("total", dict(Counter(o for _, o, _ in outcome)))
    for case, o, err in outcome:
        if o not in ALLOWED:
            last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [""]
            print(f"  {o:30s} {case.name}: {last[0][:160]}")
