"""Where int8 error comes from: the int8 artifact's tensors against the fp32 reference's.

`run_inspect(reference, candidate, data)` runs both artifacts on the same
validation images, on the runtimes that ship them (onnxruntime for .onnx;
LiteRT's XNNPACK delegate and builtin kernels for .tflite), and compares every
quantized tensor of the candidate with its fp32 counterpart (see
`metrics.ErrorStats` for SQNR, cosine, errors in quantization steps and
saturation). Each tensor's layer is also run alone on the reference's values of
its inputs, quantized with the candidate's parameters: the error it adds by
itself ("own"), the rest being inherited from the layers before it.

Counterparts are found by graph order, kind of layer and shape, then by name
(see `match`): the converter keeps the ONNX tensor names in TFLite, and
onnxruntime.quantization keeps the fp32 model's names, but edgecnn's fp32 and
int8 exports agree on only part of theirs.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.util import require_file
from edgecnn.verify.metrics import ErrorStats
from edgecnn.verify.taps import Tap

SUFFIXES = (".onnx", ".tflite")
CRUSHED_DB = 10.0  # a tensor's per-channel SQNR this far below its own: crushed channels
#: the table's columns (one row per layer)
HEADERS = ("#", "tensor", "layer", "op", "SQNR dB", "own dB", "own %", "ch dB", "cosine",
           "max err", "mean err", "sat %")
#: what the columns mean, printed under the table
LEGEND = ("SQNR: int8 vs fp32 on the whole model; own: the layer alone on the fp32 inputs, "
          "quantized; own %: its share of the tensor's error; ch dB: median per-channel SQNR; "
          "errors in quantization steps; sat: values at the int8 limits")


def _open(path: Path, role: str, threads: int | None):
    path = require_file(path, f"(--{role})")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise EdgecnnError(f"{path}: --{role} must be .onnx or .tflite, not "
                           f"{suffix or '(no suffix)'}")
    from edgecnn.runtime.check import check_file

    check_file(path)  # the sessions' structural check: a damaged file is one line here too
    if suffix == ".onnx":
        from edgecnn.verify import onnx_graph as module
    else:
        from edgecnn.verify import tflite_graph as module
    cls = {("reference", ".onnx"): "OnnxReference", ("candidate", ".onnx"): "OnnxCandidate",
           ("reference", ".tflite"): "TfliteReference",
           ("candidate", ".tflite"): "TfliteCandidate"}[role, suffix]
    return getattr(module, cls)(path, threads)


def align(ref: np.ndarray, shape: tuple[int, ...], ref_layout: str,
          layout: str) -> np.ndarray | None:
    """The reference batch in the candidate's layout and shape, or None when the two
    cannot be the same tensor. 4-D tensors are transposed between NCHW and NHWC;
    shapes that differ only in size-1 dimensions are reshaped."""
    if ref.ndim == 4 and ref_layout != layout:
        ref = ref.transpose((0, 2, 3, 1) if layout == "NHWC" else (0, 3, 1, 2))
    if ref.shape == tuple(shape):
        return ref
    if [d for d in ref.shape if d != 1] == [d for d in shape if d != 1]:
        return ref.reshape(shape)
    return None


def match(taps: list[Tap], reference, ref_values: dict[str, np.ndarray],
          cand_values: dict[str, np.ndarray], layout: str) -> tuple[dict[str, str], float]:
    """tap name -> reference tensor name, and the share of pairs whose names agree.

    Both graphs come from the same network, so their layers appear in the same order:
    the taps and the reference's layer outputs are aligned as sequences of (kind of
    layer, shape) with difflib's longest-matching-blocks alignment, which skips what
    only one side has (a pad, a reshape, a float island). A tap left out is paired by
    name when a reference tensor of that name (or an alias, or a converter's suffix
    such as "mean_mean") has its kind and shape. Names alone are not enough: between
    edgecnn's fp32 and int8 exports `relu_3`, `add_1`, `conv2d_7` (convolutions
    without batch norm) and `logits` agree, but a batch-normed convolution is
    `getitem_5` in one and `conv2d_5` in the other, and `sigmoid_2` can name
    different tensors (SiLU is one op in fp32 and sigmoid + mul once quantized).
    """
    def shape(values: np.ndarray, aligned: bool) -> tuple[int, ...]:
        if not aligned and values.ndim == 4 and reference.layout != layout:
            values = values.transpose((0, 2, 3, 1) if layout == "NHWC" else (0, 3, 1, 2))
        return tuple(d for d in values.shape[1:] if d != 1)

    refs = [n for n in reference.layer_outputs if n in ref_values]
    ref_keys = [(reference.kinds.get(n, ""), shape(ref_values[n], False)) for n in refs]
    tap_keys = [(t.kind, shape(cand_values[t.name], True)) for t in taps]
    pairs: dict[str, str] = {}
    matcher = difflib.SequenceMatcher(None, tap_keys, ref_keys, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            pairs[taps[block.a + k].name] = refs[block.b + k]
    used = set(pairs.values())
    for tap, key in zip(taps, tap_keys, strict=True):
        if tap.name in pairs:
            continue
        names = [*(n for n in (tap.name, *tap.aliases) if n in ref_values),
                 *sorted((r for r in ref_values if tap.name.startswith(r + "_")), key=len,
                         reverse=True)]
        for name in names:
            if name not in used and (reference.kinds.get(name, ""),
                                     shape(ref_values[name], False)) == key:
                pairs[tap.name] = name
                used.add(name)
                break
    agree = sum(1 for t in taps if t.name in pairs and pairs[t.name] in (t.name, *t.aliases))
    return pairs, agree / max(len(pairs), 1)


def _record(reference: Path, candidate: Path):
    from edgecnn.runtime.metadata import read_metadata

    for path in (candidate, reference):
        metadata = read_metadata(path)
        if metadata is not None:
            return metadata.preprocessing
    raise EdgecnnError(f"{candidate}: no edgecnn metadata in the candidate or in {reference} "
                       "(no embedded 'edgecnn' entry, no sidecar .json); inspect needs the "
                       "preprocessing record to feed the images")


#: which images `run_inspect` reads: the first of the validation split, or the last of the
#: training split (held out from the gate: the fallback ranks layers on them)
SPLITS = ("val", "train_tail")


def run_inspect(reference: Path, candidate: Path, data: str, *, images: int = 32,
                seed: int = 0, threads: int | None = None, batch_size: int = 4,
                split: str = "val") -> dict:
    """Compare every quantized tensor of `candidate` (.onnx QDQ or full-int8 .tflite)
    with its counterpart in the fp32 `reference` on the first `images` validation
    images of `data` (split="train_tail": the last `images` of the training split).
    Returns the report dict (see `layers` in it: one entry per matched tensor, in graph
    order). Raises EdgecnnError naming the file or flag at fault.
    """
    from edgecnn.data import load
    from edgecnn.preprocess import prepare

    if images < 1:
        raise ParameterError("images", f"must be at least 1, got {images}")
    reference, candidate = Path(reference), Path(candidate)
    ref = _open(reference, "reference", threads)
    cand = _open(candidate, "candidate", threads)
    if not cand.taps:
        raise EdgecnnError(f"{candidate}: no quantized activations (int8 tensors or "
                           "QuantizeLinear nodes); --candidate must be an int8 model")
    record = _record(reference, candidate)
    if split not in SPLITS:
        raise EdgecnnError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    dataset = load(data, seed=seed)
    pixels = dataset.val_images[:images] if split == "val" else dataset.train_images[-images:]
    if len(pixels) == 0:
        raise EdgecnnError(f"{data}: the validation split is empty")
    x_ref = prepare(pixels, record.with_layout(ref.layout))
    x_cand = prepare(pixels, record.with_layout(cand.layout))
    _guard(reference, ref.run, x_ref[:1])

    axis = 1 if cand.layout == "NCHW" else -1
    stats: dict[str, dict[str, ErrorStats]] = {}
    own: dict[str, dict[str, ErrorStats]] = {}
    matched: dict[str, str] = {}
    names_agree = 0.0
    for start in range(0, len(pixels), batch_size):
        ref_values = _guard(reference, ref.run, x_ref[start:start + batch_size])
        xc = x_cand[start:start + batch_size]
        for kernels in cand.kernels:
            values = _guard(candidate, cand.run, xc, kernels)
            if not matched:
                matched, names_agree = match(cand.taps, ref, ref_values, values, cand.layout)
                if not matched:
                    raise EdgecnnError(f"{candidate}: no quantized tensor has a float "
                                       f"counterpart in {reference} (by graph order, kind "
                                       "and shape, or by name); are they the same model?")
                cand.set_boundaries(set(matched))
                taps = {t.name: t for t in cand.taps}
                layers = [t.name for t in cand.taps if t.name in matched and t.ops
                          and all(i in matched for i in t.inputs)]
            aligned = {name: align(ref_values[r], values[name].shape, ref.layout, cand.layout)
                       for name, r in matched.items()}
            for name in matched:
                tap = taps[name]
                entry = stats.setdefault(name, {}).setdefault(kernels, ErrorStats(tap.scale))
                entry.add(aligned[name], tap.dequantize(values[name]), values[name], tap.limits,
                          tap.zero_point, axis)
            feeds = {name: taps[name].quantize(aligned[name]) for name in matched}
            layer_values = _guard(candidate, cand.run_layers, xc, feeds, kernels, layers)
            for name, raw in layer_values.items():
                tap = taps[name]
                entry = own.setdefault(name, {}).setdefault(kernels, ErrorStats(tap.scale))
                entry.add(aligned[name], tap.dequantize(raw), raw, tap.limits, tap.zero_point, axis)
    return _report(reference, candidate, data, len(pixels), ref, cand, matched, names_agree,
                   stats, own)


def _guard(path: Path, run, x: np.ndarray, *args):
    """`run(x, *args)`, a runtime's error becoming one line naming the file."""
    try:
        return run(x, *args)
    except EdgecnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtimes raise untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgecnnError(f"{path}: cannot run on the preprocessed images {x.shape} "
                           f"({first[:200]})") from None


def _report(reference: Path, candidate: Path, data: str, count: int, ref, cand,
            matched: dict[str, str], names_agree: float, stats, own) -> dict:
    layers = []
    for depth, tap in enumerate(t for t in cand.taps if t.name in matched):
        runtimes = {}
        for kernels, total in stats[tap.name].items():
            entry = total.summary()
            mine = own.get(tap.name, {}).get(kernels)
            if mine is not None:
                entry["own_sqnr_db"] = mine.sqnr_db
                entry["own_share"] = (min(1.0, mine.noise / total.noise) if total.noise > 0
                                      else 0.0)
                entry["own_channel_sqnr_db"] = mine.channel_sqnr_db
            else:  # a quantized model input: its error is all its own
                entry["own_sqnr_db"], entry["own_share"] = entry["sqnr_db"], 1.0
                entry["own_channel_sqnr_db"] = entry["channel_sqnr_db"]
            runtimes[kernels] = entry
        layers.append({
            "depth": depth, "tensor": tap.name, "reference_tensor": matched[tap.name],
            "layer": ref.labels.get(matched[tap.name], matched[tap.name]), "op": tap.op,
            "scale": tap.scale, "zero_point": tap.zero_point,
            "dtype": np.dtype(tap.dtype).name, "inputs": list(tap.inputs), "runtimes": runtimes,
        })
    kernels = list(cand.kernels)
    return {"reference": str(reference), "candidate": str(candidate), "data": data,
            "images": count, "names_agree": names_agree, "runtimes": kernels,
            "unmatched": [t.name for t in cand.taps if t.name not in matched],
            "layers": layers, "worst": [entry["tensor"] for entry in worst_layers(
                layers, kernels[0], len(layers))]}


def rank_key(entry: dict, kernels: str) -> float:
    """Layers rank by the SQNR of the error they add by themselves (lowest first)."""
    return entry["runtimes"][kernels]["own_sqnr_db"]


def worst_layers(layers: list[dict], kernels: str, top: int) -> list[dict]:
    """The `top` layers adding most error by themselves on `kernels` (lowest own SQNR)."""
    return sorted(layers, key=lambda e: rank_key(e, kernels))[:top]


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def table_rows(report: dict, kernels: str, top: int) -> list[list[str]]:
    rows = []
    for rank, e in enumerate(worst_layers(report["layers"], kernels, top), 1):
        r = e["runtimes"][kernels]
        rows.append([str(rank), e["tensor"], e["layer"], e["op"], _db(r["sqnr_db"]),
                     _db(r["own_sqnr_db"]), f"{100 * r['own_share']:.0f}",
                     _db(r["channel_sqnr_db"]), f"{r['cosine']:.4f}", f"{r['max_err_steps']:.1f}",
                     f"{r['mean_err_steps']:.2f}", f"{100 * r['saturated']:.2f}"])
    return rows


def findings(report: dict, kernels: str) -> list[str]:
    """Plain sentences on the worst layer: what it adds, and an input whose per-channel
    SQNR is far below its tensor SQNR (one channel's range crushing the others)."""
    if not report["layers"]:
        return []
    worst = worst_layers(report["layers"], kernels, 1)[0]
    r = worst["runtimes"][kernels]
    lines = [f"worst layer on {kernels}: {worst['layer']} ({worst['op']}, tensor "
             f"{worst['tensor']}): {_db(r['own_sqnr_db'])} dB SQNR by itself, "
             f"{100 * r['own_share']:.0f}% of its error"]
    by_tensor = {e["tensor"]: e for e in report["layers"]}
    for name in worst["inputs"]:
        source = by_tensor.get(name)
        if source is None:
            continue
        s = source["runtimes"][kernels]
        if s["channel_sqnr_db"] < s["sqnr_db"] - CRUSHED_DB:
            lines.append(f"it reads {name} ({source['layer']}), whose channels keep "
                         f"{_db(s['channel_sqnr_db'])} dB SQNR (median) against "
                         f"{_db(s['sqnr_db'])} dB for the whole tensor: a few channels' range "
                         "crushes the others (per-tensor int8 activations)")
    clipped = [e for e in report["layers"] if e["runtimes"][kernels]["clipped"] > 0.01]
    for e in clipped[:3]:
        lines.append(f"{e['tensor']} ({e['layer']}): "
                     f"{100 * e['runtimes'][kernels]['clipped']:.1f}% of the fp32 values lie "
                     "outside the int8 range (calibration range too narrow)")
    return lines


def to_json(report: dict) -> dict:
    """The report with infinities as null (JSON has no inf)."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(report)


def plot_sqnr(report: dict, path: Path) -> bool:
    """SQNR along depth: int8 vs fp32 per tensor (solid) and each layer's own (dashed),
    one colour per runtime. Returns False (writes nothing) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    from edgecnn.util import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.22 * len(layers)), 4.2), dpi=120)
    depth = [e["depth"] for e in layers]
    for kernels, color in zip(report["runtimes"], ("tab:blue", "tab:orange"), strict=False):
        total = [min(e["runtimes"][kernels]["sqnr_db"], 80.0) for e in layers]
        mine = [min(e["runtimes"][kernels]["own_sqnr_db"], 80.0) for e in layers]
        ax.plot(depth, total, "o-", color=color, ms=3, label=f"{kernels}: int8 vs fp32")
        ax.plot(depth, mine, "x--", color=color, ms=4, lw=0.8, label=f"{kernels}: layer's own")
    ax.set_xticks(depth)
    ax.set_xticklabels([e["layer"] if e["layer"] != e["tensor"] else e["tensor"]
                        for e in layers], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB, capped at 80)")
    ax.set_title(f"{Path(report['candidate']).name} vs {Path(report['reference']).name}: "
                 f"SQNR along depth ({report['images']} images)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True




#: the columns `export --int8` puts in report.md
REPORT_HEADERS = ("tensor", "layer", "op", "SQNR dB", "own dB", "own %", "ch dB")
REPORT_PLOT = "sqnr_along_depth.png"
REPORT_JSON = "inspect.json"


def inspect_for_report(reference: Path, candidates: list[Path], data: str, directory: Path, *,
                       seed: int = 0, images: int = 32, top: int = 5) -> dict:
    """What `export --int8` records: inspect the int8 .tflite (both LiteRT kernel sets),
    else the int8 .onnx, against `reference`; write inspect.json and the plot into
    `directory`; return the `top` worst layers on the first runtime. An artifact inspect
    cannot read gives {"error": message} instead of failing the export."""
    int8 = [p for p in candidates if "int8" in Path(p).stem]
    chosen = next((p for p in int8 if Path(p).suffix == ".tflite"), int8[0] if int8 else None)
    if chosen is None:
        return {"error": "no int8 artifact to inspect"}
    try:
        report = run_inspect(reference, chosen, data, images=images, seed=seed)
    except EdgecnnError as exc:
        return {"candidate": Path(chosen).name, "error": str(exc)}
    from edgecnn.util import atomic_write

    with atomic_write(Path(directory) / REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    plotted = plot_sqnr(report, Path(directory) / REPORT_PLOT)
    kernels = report["runtimes"][0]
    worst = [{"tensor": e["tensor"], "layer": e["layer"], "op": e["op"],
              **{k: e["runtimes"][kernels][k] for k in ("sqnr_db", "own_sqnr_db", "own_share",
                                                       "channel_sqnr_db")}}
             for e in worst_layers(report["layers"], kernels, top)]
    return to_json({"candidate": Path(chosen).name, "runtime": kernels, "images": report["images"],
                    "json": REPORT_JSON, "plot": REPORT_PLOT if plotted else None,
                    "worst": worst})


def report_rows(summary: dict) -> list[list[str]]:
    """`REPORT_HEADERS` rows of `inspect_for_report`'s worst layers (None = exact, inf dB)."""
    def db(value: float | None) -> str:
        return "inf" if value is None else f"{value:.1f}"

    return [[w["tensor"], w["layer"], w["op"], db(w["sqnr_db"]), db(w["own_sqnr_db"]),
             f"{100 * w['own_share']:.0f}", db(w["channel_sqnr_db"])]
            for w in summary.get("worst", [])]
