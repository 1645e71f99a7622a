"""The zoo's mobilenet_v2 at 224: edgecnn's fp32 ONNX export and a quantize_static QDQ
copy, converted. Structure (the issue's bar): zero TRANSPOSE; zero QUANTIZE and
DEQUANTIZE with int8 I/O; XNNPACK takes the whole graph. Parity on a couple of images
against onnxruntime. (Conversion time is a figure of benchmarks/zoo.py, not asserted.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")

from edgecnn.export.tflite import to_flatbuffer  # noqa: E402
from edgecnn.qmath import affine_quantize  # noqa: E402
from edgecnn.runtime.backends.tflite import interpreter  # noqa: E402
from edgecnn.verify.litert import (  # noqa: E402
    delegate_coverage,
    op_counts,
    run_images,
)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Fresh BN layers fold to identity-like convolutions; give them trained-looking
    statistics so activations (and quantization ranges) are realistic."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from edgecnn.export.onnx import simplify, to_onnx
    from edgecnn.models import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("mobilenet_v2").eval()
    randomize_batchnorm(model)
    fp32 = simplify(to_onnx(model, torch.randn(1, 3, 224, 224)))
    torch.set_num_threads(threads)
    directory = tmp_path_factory.mktemp("mobilenet_v2")
    onnx.save(fp32, directory / "fp32.onnx")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 3, 224, 224)).astype(np.float32)
    name = fp32.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: images[i:i + 1]} for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(directory / "fp32.onnx", directory / "qdq.onnx", Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"fp32": fp32, "qdq": onnx.load(directory / "qdq.onnx"), "images": images[4:],
            "name": name}


def _ort(model: onnx.ModelProto, name: str, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in images])


def test_int8_structure_and_parity(mobilenet) -> None:
    data = to_flatbuffer(mobilenet["qdq"])
    counts = op_counts(data)
    assert counts["TRANSPOSE"] == counts["QUANTIZE"] == counts["DEQUANTIZE"] == 0
    assert counts["CONV_2D"] == 35 and counts["DEPTHWISE_CONV_2D"] == 17
    assert counts["RELU6"] == 0 and counts["ADD"] == 10
    details = interpreter(data).get_input_details()[0]
    assert list(details["shape"]) == [1, 224, 224, 3] and details["dtype"] == np.int8
    coverage = delegate_coverage(data)
    assert coverage.outside == 0 and coverage.partitions == 1

    q, (scale, zero) = run_images(data, mobilenet["images"])
    ref = _ort(mobilenet["qdq"], mobilenet["name"], mobilenet["images"])
    expected = affine_quantize(ref, scale, zero)
    assert (np.abs(q.astype(np.int32) - expected) <= 1).mean() >= 0.99
    assert (q.argmax(1) == ref.argmax(1)).all()


def test_float_structure_and_parity(mobilenet) -> None:
    data = to_flatbuffer(mobilenet["fp32"])
    counts = op_counts(data)
    assert counts["TRANSPOSE"] == 0 and counts["RELU6"] == 0
    coverage = delegate_coverage(data)
    assert coverage.outside == 0 and coverage.partitions == 1
    out, _ = run_images(data, mobilenet["images"])
    ref = _ort(mobilenet["fp32"], mobilenet["name"], mobilenet["images"])
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5


def test_int8_builtin_kernels_bit_exact(mobilenet) -> None:
    """quantize_static's mobilenet_v2 at 224 (ADDs, a 7x7 MEAN): every emulated op of the
    builtin kernels matches `builtin_int8`'s fixed-point arithmetic exactly."""
    from edgecnn.verify.builtin_int8 import check_builtin

    checks = check_builtin(to_flatbuffer(mobilenet["qdq"]), mobilenet["images"])
    assert len(checks) == 35 + 17 + 10 + 1 + 1  # CONV_2D, DEPTHWISE, ADD, MEAN, FC
    wrong = [(c.index, c.op, c.output, c.mismatches) for c in checks if c.mismatches]
    assert not wrong, f"builtin outputs unlike the emulation: {wrong}"
