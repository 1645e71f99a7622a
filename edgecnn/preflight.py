"""Fail fast: check, before any training, that a model can become the artifacts asked for.

`check_exportable` takes the untrained model through the whole int8 path on random
weights and random images (capture, PTQ on one batch, QDQ ONNX, and TFLite when
asked): seconds, where finding out after training costs minutes. Whatever stops it
is raised with the same one-line error the real export would give, naming the node
and op at fault.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from edgecnn.config import Preprocessing
from edgecnn.errors import EdgecnnError, ParameterError


def check_exportable(model: nn.Module, preprocessing: Preprocessing, *,
                     formats: tuple[str, ...] = ("onnx", "tflite"), io: str = "int8",
                     config=None) -> None:
    """Quantize (PTQ, one random batch) and export a copy of `model` to int8 ONNX, then
    convert it to TFLite when "tflite" is in `formats`; `model` is left unchanged.

    Raises EdgecnnError("model cannot be exported to int8 ...: <the export's own error>").
    Quantizer and converter warnings are silenced here: the real run reports them.
    `config`: the QuantConfig of the real run (its float layers, `--keep-float`).
    """
    from edgecnn import quant
    from edgecnn.export import onnx as onnx_export

    h, w = preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, preprocessing.channels, h, w, generator=generator)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            converted = quant.quantize(model.eval(), x[:2], quant.PTQ(calib_batches=1,
                                                                      batch_size=8),
                                       train_data=x, config=config)
            path = onnx_export.export_qdq(converted, preprocessing, Path(tmp) / "model.onnx")
            if "tflite" in formats:
                from edgecnn.export.tflite import to_flatbuffer

                to_flatbuffer(path, io=io)
    except ParameterError:  # an argument at fault (an --int16 layer with no 16x8 kernel)
        raise
    except EdgecnnError as exc:
        raise EdgecnnError(f"model cannot be exported to int8 "
                           f"{' and '.join(formats)} (checked before training): {exc}") from None
    finally:
        model.train()
