"""The export stage: a checkpoint (and a quantized program) -> `model_{fp32,int8}` files.

`ArtifactConfig` says which formats are written and how the int8 files' edges look;
`export_artifacts` writes them. The int8 .onnx is the onnxruntime variant of the
canonical QDQ model, the .tflite is converted from the canonical one, in memory (a
TFLite-only export writes no ONNX file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecnn.errors import ParameterError
from edgecnn.export.onnx import ACTIVATION_TYPES, DEFAULT_ACTIVATIONS
from edgecnn.export.tflite import IO_MODES

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

    Raises EdgecnnError for a checkpoint that does not load (or is not `model_name`'s)
    and for a graph the converter cannot lower (naming the node).
    """
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.export import onnx as onnx_export

    model, config = load_checkpoint(Path(checkpoint), model_name)
    if quantized is None:
        precision, proto = "fp32", onnx_export.fp32_model(model, config.preprocessing,
                                                          model_name=config.model)
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
