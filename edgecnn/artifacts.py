"""The export stage: a checkpoint (and a quantized program) -> `model_{fp32,int8}` files.

`ArtifactConfig` says which formats are written and how the int8 files' edges look;
`export_artifacts` writes them. The int8 .onnx is the onnxruntime variant of the
canonical QDQ model, the .tflite is converted from the canonical one, in memory (a
TFLite-only export writes no ONNX file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.export.onnx import ACTIVATION_TYPES, DEFAULT_ACTIVATIONS
from edgecnn.export.tflite import IO_MODES
from edgecnn.preflight import check_interface, one_thread

FORMATS = ("onnx", "tflite")


@dataclass(frozen=True)
class ArtifactConfig:
    """Which artifacts an export writes.

    formats: a non-empty selection of FORMATS.
    io: the int8 .tflite's input / output type: "int8" (TFLite's full-integer default),
        "uint8" (camera pipelines, Edge TPU-style; TFLiteConverter's
        `inference_input_type=uint8`) or "float" (QUANTIZE / DEQUANTIZE inside). fp32
        files are float in, float out whatever this says.
    onnx_activations: the int8 .onnx's activation type, "uint8" or "int8" (the same grid
        shifted by 128; the canonical QDQ model the .tflite comes from is int8).
    Raises ParameterError naming the field.
    """

    formats: tuple[str, ...] = FORMATS
    io: str = "int8"
    onnx_activations: str = DEFAULT_ACTIVATIONS

    def __post_init__(self) -> None:
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        object.__setattr__(self, "formats", formats)
        if not formats:
            raise ParameterError("formats", f"is empty: choose from {', '.join(FORMATS)}")
        if set(formats) - set(FORMATS):
            raise ParameterError("formats", f"{','.join(map(str, formats))}: supported are "
                                 f"{', '.join(FORMATS)}")
        if self.io not in IO_MODES:
            raise ParameterError("io", f"must be one of {', '.join(IO_MODES)}, got {self.io!r}")
        if self.onnx_activations not in ACTIVATION_TYPES:
            raise ParameterError("onnx_activations", f"must be one of "
                                 f"{', '.join(ACTIVATION_TYPES)}, got {self.onnx_activations!r}")

    def paths(self, out_dir: Path, precision: str) -> list[Path]:
        """`out_dir/model_{precision}.{format}` for each format, in FORMATS order."""
        return [Path(out_dir) / f"model_{precision}.{f}" for f in FORMATS if f in self.formats]


def export_artifacts(checkpoint: Path, out_dir: Path, artifacts: ArtifactConfig = ArtifactConfig(),
                     *, model_name: str | None = None,
                     quantized: Path | None = None) -> list[Path]:
    """fp32 artifacts from the checkpoint directory `checkpoint`, or with `quantized` (a
    directory from `edgecnn.quant.run.quantize_checkpoint`) int8 ones: the files of
    `artifacts.paths(out_dir, precision)`, written atomically; returns them.

    Raises EdgecnnError for a checkpoint that does not load (or is not `model_name`'s),
    a model that does not return one [N, classes] logits tensor
    (`preflight.check_interface`), an fp32 ONNX that differs from the model at batch 1
    (`check_batch_one`) and a graph the converter cannot lower (naming the node); nothing
    is written then.
    """
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.export import onnx as onnx_export

    model, config = load_checkpoint(Path(checkpoint), model_name)
    if quantized is None:
        check_interface(model, config.preprocessing, config.model,
                        str(Path(checkpoint) / "config.json"))
        precision, proto = "fp32", onnx_export.fp32_model(model, config.preprocessing,
                                                          model_name=config.model)
        check_batch_one(model, proto, config.preprocessing, config.model)
        shipped = proto
    else:
        from edgecnn import quant

        program, metadata = quant.load_program(Path(quantized))
        precision, proto = "int8", onnx_export.qdq_model(program, metadata.preprocessing,
                                                         model_name=config.model)
        shipped = onnx_export.onnxruntime_variant(proto, activations=artifacts.onnx_activations)
    written = []
    for path in artifacts.paths(out_dir, precision):
        if path.suffix == ".onnx":
            written.append(onnx_export.save(shipped, path))
        else:
            from edgecnn.export.tflite import convert

            written.append(convert(proto, path, io=artifacts.io if quantized else "float"))
    return written


def check_batch_one(model, proto, preprocessing, model_name: str, images: int = 2) -> None:
    """The fp32 ONNX `proto` (onnxruntime) gives `model`'s logits at batch 1, as devices
    run it, on `images` random inputs, within 1e-3 of the largest |logit| (float
    rounding is ~1e-6 of it). torch.export traces a batch of 2 with the batch dimension
    dynamic: a Python branch on the input's shape is fixed for that batch and the other
    branch is gone from the file, silently. Raises EdgecnnError naming the model."""
    import numpy as np
    import onnxruntime as ort
    import torch

    h, w = preprocessing.input_size
    x = torch.randn(images, 1, preprocessing.channels, h, w,
                    generator=torch.Generator().manual_seed(1))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with torch.no_grad(), one_thread():
        expected = np.stack([model.eval()(xi).numpy() for xi in x])
    got = np.stack([session.run(None, {name: xi.numpy()})[0] for xi in x])
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.inf
    if not diff <= 1e-3 * float(np.max(np.abs(expected))) + 1e-6:
        raise EdgecnnError(f"{model_name}: the exported ONNX differs from the model at batch 1 "
                           f"(max |diff| {diff:.3g}): a Python branch on the input's shape? "
                           "torch.export fixes such a branch for the batch it traces (2)")
