"""The second oracle: tflite-runtime 2.14 with numpy 1.24 (Raspberry Pi OS bookworm),
in its own virtual environment (`pi_env`). Every per-op parity case, float and
QDQ, converted here and run there, against onnxruntime with the same bars as on
LiteRT: float within 1e-5 relative, int8 within one output step. All models run
in one process there, with and without the default XNNPACK delegate.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from pi_env import pi_python_or_skip, run_pi  # noqa: E402
from test_tflite_ops import CASES, FLOAT_RTOL, _ort, quantize  # noqa: E402

from edgecnn.export.tflite import to_flatbuffer  # noqa: E402

# jobs: [{"model", "inputs": [npy of samples x NHWC input], "output"}]; writes the
# stacked outputs per resolver and the output's (scale, zero point).
RUNNER = r'''
import json, sys
import numpy as np
from tflite_runtime.interpreter import Interpreter, OpResolverType

jobs = json.load(open(sys.argv[1]))
for job in jobs:
    samples = [np.load(path) for path in job["inputs"]]
    for name, resolver in (("delegate", OpResolverType.AUTO),
                           ("builtin", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
        it = Interpreter(model_path=job["model"], num_threads=1,
                         experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        out, outputs = it.get_output_details()[0], []
        for i in range(len(samples[0])):
            for detail, x in zip(it.get_input_details(), samples):
                x = x[i]
                if detail["dtype"] == np.int8:
                    scale, zero = detail["quantization"]
                    x = np.clip(np.round(x / scale) + zero, -128, 127)
                it.set_tensor(detail["index"], x.astype(detail["dtype"]))
            it.invoke()
            outputs.append(it.get_tensor(out["index"]))
        np.save(job["output"] + "." + name + ".npy", np.concatenate(outputs))
        json.dump(list(map(float, out["quantization"])), open(job["output"] + ".q.json", "w"))
print(f"ran {len(jobs)} models")
'''


def run_on_pi(directory, jobs: list[dict]) -> dict[str, tuple[dict[str, np.ndarray], tuple]]:
    """Run the jobs in the Pi venv; per output stem: {resolver: outputs}, (scale, zero)."""
    (directory / "jobs.json").write_text(json.dumps(jobs))
    (directory / "runner.py").write_text(RUNNER)
    done = run_pi([str(directory / "runner.py"), str(directory / "jobs.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ran {len(jobs)} models" in done.stdout
    results = {}
    for job in jobs:
        stem = job["output"]
        quant = tuple(json.loads(open(stem + ".q.json").read()))
        results[stem] = ({r: np.load(f"{stem}.{r}.npy") for r in ("delegate", "builtin")}, quant)
    return results


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@pytest.mark.pi_venv
def test_tflite_runtime_2_14_agrees_with_onnxruntime(tmp_path) -> None:
    pi_python_or_skip()
    jobs, expected = [], []
    for case in CASES:
        float_model = case.model()
        variants = [("float", float_model)]
        if not case.qdq:
            variants.append(("int8", quantize(case.model(), case, tmp_path)))  # it edits its input
        feeds = case.feeds()
        inputs = []
        for name, value in feeds.items():
            inputs.append(str(tmp_path / f"{case.id}_{name}.npy"))
            np.save(inputs[-1], _nhwc(value)[None])
        for kind, model in variants:
            stem = str(tmp_path / f"{case.id}_{kind}")
            (tmp_path / f"{case.id}_{kind}.tflite").write_bytes(to_flatbuffer(model))
            jobs.append({"model": stem + ".tflite", "inputs": inputs, "output": stem})
            expected.append((f"{case.id}/{kind}", kind, _ort(model, feeds), stem))
    results = run_on_pi(tmp_path, jobs)

    failures = []
    for label, kind, ref, stem in expected:
        outputs, (scale, zero) = results[stem]
        for runner, out in outputs.items():
            out = out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
            if kind == "float":
                error = np.abs(out - ref).max() / np.abs(ref).max()
                if error > FLOAT_RTOL:
                    failures.append(f"{label} {runner}: relative error {error:.2e}")
            else:
                steps = np.abs(out.astype(np.int32) - np.clip(np.round(ref / scale) + zero,
                                                              -128, 127)).max()
                if steps > 1:
                    failures.append(f"{label} {runner}: {steps:.0f} steps off")
    assert not failures, failures
