"""Where mobilenet_v2's time goes, per layer kind, fp32 vs int8, on onnxruntime and LiteRT.

    python benchmarks/profile_ops.py [--model mobilenet_v2] [--cache DIR] [--runs 100]

Makes (or reuses, in the layout benchmarks/zoo.py caches: DIR/MODEL/latency224/) the
224x224, 1000-class fp32 and PTQ int8 files (random weights and calibration images:
time does not depend on the values), runs `edgecnn bench --profile`'s engine on each at
1 thread and prints the markdown for benchmarks/RESULTS.md: total per-op time, the share
of depthwise, pointwise, other conv and fc layers, and the int8 speed-up of each kind.
The JSON with every op goes to DIR/MODEL/latency224/profile.json; with --update
RESULTS.md the section between the profile_ops markers there is replaced (appended
when absent; benchmarks/zoo.py keeps it when it rewrites the file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecnn.runtime import profile
from edgecnn.runtime.machine import describe_machine

FILES = ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite")
def make_files(name: str, directory: Path) -> dict[str, Path]:
    """The four files, as benchmarks/zoo.py's latency_row makes them (seed 0, 16 images)."""
    files = {k: directory / k for k in FILES}
    if all(p.is_file() for p in files.values()):
        return files
    import torch

    from edgecnn import quant
    from edgecnn.config import Preprocessing
    from edgecnn.export import onnx as onnx_export
    from edgecnn.export.tflite import convert
    from edgecnn.models import create_model

    directory.mkdir(parents=True, exist_ok=True)
    record = Preprocessing((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           tuple(str(i) for i in range(1000)))
    torch.manual_seed(0)
    model = create_model(name).eval()
    calib = torch.randn(16, 3, 224, 224)
    converted = quant.quantize(model, calib[:2], quant.PTQ(calib_batches=2, batch_size=8),
                               train_data=calib)
    onnx_export.export_fp32(model, record, files["fp32.onnx"])
    onnx_export.export_qdq(converted, record, files["int8.onnx"])
    for precision in ("fp32", "int8"):
        convert(files[f"{precision}.onnx"], files[f"{precision}.tflite"])
    return files


def kind_us(prof: dict) -> dict[str, float]:
    """µs per layer kind (the shares of `profile.by_kind` times the total)."""
    return {k: v * prof["total_us"] for k, v in profile.by_kind(prof).items()}


def render(profiles: dict[str, dict], machine: dict, model: str, runs: int) -> str:
    kinds = ("dw", "pw", "conv", "fc", "input")
    lines = [f"### Where {model}'s time goes (per-op profile, 224x224, batch 1, 1 thread)", "",
             f"`python benchmarks/profile_ops.py --model {model} --runs {runs}` "
             f"(`edgecnn bench --profile`'s engine), {machine['cpu']}, "
             f"{machine['usable_cores']} cores, onnxruntime "
             f"{machine['packages'].get('onnxruntime', '?')}, ai-edge-litert "
             f"{machine['packages'].get('ai-edge-litert', '?')}. onnxruntime: its profiler's "
             "kernel times; LiteRT: each op cut out as a one-op model and timed alone (its "
             "Python API has no op profiler), so its sums include one invoke overhead per op. "
             "A layer is one conv or fc op and the ops after it (activation, Add, "
             "re-quantize or transpose).", "",
             "| file | runtime | whole run ms | sum of ops ms | " + " | ".join(kinds) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in kinds) + " |"]
    for name, prof in profiles.items():
        shares = profile.by_kind(prof)
        runtime = "onnxruntime" if name.endswith(".onnx") else "LiteRT"
        lines.append(f"| {name} | {runtime} | {prof['whole_run_us'] / 1e3:.2f} | "
                     f"{prof['total_us'] / 1e3:.2f} | "
                     + " | ".join(f"{shares.get(k, 0.0):.0%}" for k in kinds) + " |")
    lines += ["", "int8 speed-up per layer kind (fp32 time / int8 time of the same layers):", "",
              "| runtime | " + " | ".join(kinds[:4]) + " | all |",
              "| --- | " + " | ".join("---" for _ in kinds[:4]) + " | --- |"]
    for suffix, runtime in ((".onnx", "onnxruntime"), (".tflite", "LiteRT")):
        a, b = kind_us(profiles[f"fp32{suffix}"]), kind_us(profiles[f"int8{suffix}"])
        cells = [f"{a[k] / b[k]:.2f}x" if a.get(k) and b.get(k) else "–" for k in kinds[:4]]
        total = profiles[f"fp32{suffix}"]["total_us"] / profiles[f"int8{suffix}"]["total_us"]
        lines.append(f"| {runtime} | " + " | ".join(cells) + f" | {total:.2f}x |")
    lines += ["", "Whole run: the median of whole runs in the same process (onnxruntime's "
              "\"model_run\" events, LiteRT's invoke); on a shared machine preemption "
              "inflates it more than the per-op medians. An op timed alone on LiteRT reads "
              "its input from memory rather than from the cache the op before it filled, "
              "so memory-bound ops (depthwise, PAD) look slower there than inside the whole "
              "model: alone, LiteRT's int8 depthwise layers are slower than its fp32 ones, "
              "yet the whole int8 model is faster (whole-run column; the latency table above "
              "has the interleaved `edgecnn bench` figures)."]
    top = sorted(profiles["int8.onnx"]["ops"], key=lambda o: -o["us"])[:5]
    lines += ["", "The five slowest int8 ONNX ops: " + "; ".join(
        f"{o['layer']} ({o['op']}, {o['us']:.0f} µs)" for o in top) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/edgecnn-zoo").expanduser())
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--from-json", action="store_true",
                        help="render the saved profile.json again instead of measuring")
    parser.add_argument("--update", type=Path, default=None,
                        help="replace the profile section of this markdown file")
    args = parser.parse_args()
    directory = args.cache / args.model / "latency224"
    if args.from_json:
        profiles = json.loads((directory / "profile.json").read_text())
    else:
        files = make_files(args.model, directory)
        profiles = {name: profile.profile_file(path, runs=args.runs, warmup=10, threads=1)
                    for name, path in files.items()}
        (directory / "profile.json").write_text(json.dumps(profiles, indent=2) + "\n")
    text = render(profiles, describe_machine(), args.model, args.runs)
    print(text)
    if args.update:
        from _sections import update_section

        update_section(args.update, "profile_ops", text)


if __name__ == "__main__":
    main()
