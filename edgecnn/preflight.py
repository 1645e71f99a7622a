"""Fail fast: check, before any training, that a model can become the artifacts asked for.

`check_interface` runs the untrained model: it must map a batch of images to one
[N, classes] logits tensor, the same for the same batch in eval mode (a tuple, a spatial
map or another class count would fail in training, with a traceback, or at validation,
after all the work; a random op left on in eval mode at export). `check_exportable`
takes the untrained model through the whole int8 path on random weights and random
images (capture, in train mode too for QAT, PTQ on one batch, the program saved and
loaded back through its checked load, QDQ ONNX, and TFLite when asked): seconds, where
finding out after training costs minutes. Whatever stops it is raised with the same
one-line error the real export would give, naming the node and op at fault.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from edgecnn.config import ArtifactMetadata, Preprocessing
from edgecnn.errors import EdgecnnError, ParameterError, first_line


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for a check's few images: more only wait on each other
    (mobilenet_v2 at 224 px on a busy 2-core machine: 2.4 s for 2 images on 2 threads,
    0.07 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_interface(model: nn.Module, preprocessing: Preprocessing, model_name: str,
                    source: str) -> None:
    """Run `model` (eval mode, one thread, no gradients; its mode restored) twice on 2
    random images of the record's shape: it must return one [2, classes] tensor, classes
    the record's, the same both times.

    Raises EdgecnnError naming `model_name` (as the user typed it) and, for a class count
    that differs, `source` (the data spec or checkpoint the classes come from): the forward
    fails, returns a tuple / list / dict or another object, a tensor that is not [N, K],
    K != classes, or other numbers the second time (a random op eval() leaves on).
    """
    h, w = preprocessing.input_size
    k = preprocessing.num_classes
    x = torch.rand(2, preprocessing.channels, h, w, generator=torch.Generator().manual_seed(0))
    need = f"edgecnn needs one [N, {k}] logits tensor"
    training = model.training
    try:
        with torch.no_grad(), one_thread():
            out = model.eval()(x)
            again = model(x) if isinstance(out, torch.Tensor) else out
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it
        shape = f"[2, {preprocessing.channels}, {h}, {w}]"
        raise EdgecnnError(f"{model_name} fails on a {shape} batch: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None
    finally:
        model.train(training)
    if isinstance(out, (tuple, list)):
        raise EdgecnnError(f"{model_name} returns a {type(out).__name__} of {len(out)} values; "
                           f"{need}")
    if not isinstance(out, torch.Tensor):
        raise EdgecnnError(f"{model_name} returns a {type(out).__name__}; {need}")
    dims = [str(d) for d in out.shape]
    shape = f"[{', '.join(['N', *dims[1:]] if out.dim() and out.shape[0] == len(x) else dims)}]"
    if out.dim() != 2:
        raise EdgecnnError(f"{model_name} returns {shape}; edgecnn needs [N, {k}] logits (a "
                           "classifier: pool and flatten before the head)")
    if out.shape[0] != len(x):
        raise EdgecnnError(f"{model_name} returns {list(out.shape)} for a batch of {len(x)}; "
                           f"{need}, one row per image")
    if out.shape[1] != k:
        raise EdgecnnError(f"{model_name} returns {out.shape[1]} logits per image; {source} "
                           f"has {k} classes (give the factory a num_classes parameter and "
                           f"size the head with it: edgecnn passes {k})")
    if not torch.allclose(out, again, rtol=1e-5, atol=1e-6, equal_nan=True):
        raise EdgecnnError(f"{model_name} gives different outputs for the same input in eval "
                           "mode (a random op eval() does not switch off: F.dropout(..., "
                           "training=True)? torch.rand?); edgecnn needs a deterministic model "
                           "to export")


def check_exportable(model: nn.Module, preprocessing: Preprocessing, *,
                     formats: tuple[str, ...] = ("onnx", "tflite"), io: str = "int8",
                     config=None, qat: bool = False) -> None:
    """With `qat`, capture a copy of `model` in train mode first, as QAT does
    (`quant.calibrate.capture`: random ops outside the dropout family are refused there).
    Quantize (PTQ, one random batch) a copy of `model`, save the program and load it
    back as the real run does (`quant.save_program`, `quant.load_program`: whatever its
    checked load refuses after training is refused here), export that to int8 ONNX, then
    convert it to TFLite when "tflite" is in `formats`; `model` is left unchanged.

    Raises EdgecnnError("model cannot be exported to int8 ...: <the export's own error>").
    Quantizer and converter warnings are silenced here: the real run reports them.
    `config`: the QuantConfig of the real run (its float layers, `--keep-float`).
    """
    from edgecnn import quant
    from edgecnn.export import onnx as onnx_export
    from edgecnn.quant.calibrate import capture

    h, w = preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, preprocessing.channels, h, w, generator=generator)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            if qat:
                capture(model, x[:2], train=True)
            converted = quant.quantize(model.eval(), x[:2], quant.PTQ(calib_batches=1,
                                                                      batch_size=8),
                                       train_data=x, config=config)
            quant.save_program(Path(tmp), converted, ArtifactMetadata(
                preprocessing, model="", precision="int8"), example_input=x[:2])
            program, _ = quant.load_program(Path(tmp))
            proto = onnx_export.qdq_model(program, preprocessing)
            onnx_export.onnxruntime_variant(proto)
            if "tflite" in formats:
                from edgecnn.export.tflite import to_flatbuffer

                to_flatbuffer(proto, io=io)
    except ParameterError:  # an argument at fault (an --int16 layer with no 16x8 kernel)
        raise
    except EdgecnnError as exc:
        raise EdgecnnError(f"model cannot be exported to int8 "
                           f"{' and '.join(formats)} (checked before training): {exc}") from None
    finally:
        model.train()
