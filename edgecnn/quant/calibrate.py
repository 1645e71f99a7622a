"""Capture, prepare, calibrate and convert: the PTQ path, and the steps QAT shares."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from edgecnn.errors import EdgecnnError
from edgecnn.progress import progress_bar
from edgecnn.quant.graph import add_int32_biases
from edgecnn.quant.precision import select
from edgecnn.quant.quantizer import (
    TFLiteInt8Quantizer,
    keep_shared_convs_unfolded,
    resolve_conv_padding,
)
from edgecnn.quant.spec import QuantConfig


def batch_dim() -> dict[int, torch.export.Dim]:
    return {0: torch.export.Dim("batch", min=1, max=65536)}


def capture(model: nn.Module, example_input: torch.Tensor, *, train: bool) -> GraphModule:
    """torch.export a copy of `model` (batch dimension dynamic) in train or eval mode.

    PTQ captures in eval mode (BN uses running statistics and is folded by
    prepare); QAT in train mode (BN kept, then rewritten into the simulated fold).
    String conv padding ('same') becomes explicit (`resolve_conv_padding`); a BN after a
    conv with other readers stays unfolded (`keep_shared_convs_unfolded`).
    """
    if example_input.dim() < 1 or len(example_input) < 2:
        raise EdgecnnError("the example input needs a batch of at least 2: torch.export "
                           "specializes a batch of 1 and BN in train mode needs 2")
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).train(train)
    # canonical strides: .contiguous() keeps a size-1 axis's stride, which torch.export
    # then reads as channels-last and traces as as_strided views
    example = example_input.clone(memory_format=torch.contiguous_format)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=(batch_dim(),))
    except Exception as exc:  # noqa: BLE001 - export raises many types; name the model
        raise EdgecnnError(f"torch.export failed for {type(model).__name__}: {exc}") from exc
    gm = program.module()
    resolve_conv_padding(gm)
    keep_shared_convs_unfolded(gm)
    return gm


def prepare_ptq(model: nn.Module, example_input: torch.Tensor,
                config: QuantConfig | None = None) -> GraphModule:
    """Capture in eval mode, fold BN, annotate, insert observers."""
    return prepare_pt2e(capture(model, example_input, train=False),
                        TFLiteInt8Quantizer(config, is_qat=False))


def _batches(x, order: torch.Tensor, batch_size: int):
    """Inputs of `x` (a tensor, or a Dataset of (input, label) items read through a
    DataLoader whose workers decode) at the positions `order`, `batch_size` at a time."""
    if isinstance(x, torch.Tensor):
        for i in range(0, len(order), batch_size):
            yield x[order[i:i + batch_size]]
        return
    from torch.utils.data import DataLoader

    from edgecnn.data.loader import batches
    from edgecnn.distributed import default_workers

    loader = DataLoader(x, batch_size=batch_size, sampler=order.tolist(),
                        num_workers=default_workers(getattr(x, "images", x)))
    for xb, _ in batches(loader):
        yield xb


@torch.no_grad()
def calibrate(prepared: GraphModule, x, *, batches: int = 32,
              batch_size: int = 64, seed: int = 0, show_progress: bool = False) -> int:
    """Run up to `batches` batches of a seeded shuffle of `x` through the observers.

    x: (N, C, H, W) inputs, or a torch Dataset of (input, label) items (only the images
    calibration uses are decoded). Returns the number of images seen.
    """
    if batches < 1 or batch_size < 1:
        raise EdgecnnError(f"calibration needs batches >= 1 and batch size >= 1, "
                           f"got {batches} and {batch_size}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    order = order[:batches * batch_size]
    steps = math.ceil(len(order) / batch_size)
    with progress_bar("calibrate", total=steps, enabled=show_progress) as bar:
        for i, xb in enumerate(_batches(x, order, batch_size)):
            prepared(xb)
            bar.advance(f"{min((i + 1) * batch_size, len(order))} images")
    return len(order)


def convert(prepared: GraphModule) -> GraphModule:
    """Observers -> explicit quantize / dequantize; every bias int32 (see add_int32_biases)."""
    converted = convert_pt2e(prepared.to(memory_format=torch.contiguous_format))
    add_int32_biases(converted)
    return converted


def ptq(model: nn.Module, example_input: torch.Tensor, x, *,
        config: QuantConfig | None = None, batches: int = 32, batch_size: int = 64,
        seed: int = 0, show_progress: bool = False) -> GraphModule:
    """Post-training quantization: prepare, calibrate on `x` (see `calibrate`), convert."""
    prepared = prepare_ptq(model, example_input, config)
    calibrate(prepared, x, batches=batches, batch_size=batch_size, seed=seed,
              show_progress=show_progress)
    return convert(prepared)


def check_patterns(model, example_input, config) -> None:
    """Capture `model` (eval mode, left unchanged) and check that every pattern of
    `config` (a QuantConfig) selects a node: the seconds-long check `export --int8` runs
    before training. Raises EdgecnnError naming the flag (see `select`)."""
    if not config.keep_float:
        return
    gm = capture(model, example_input, train=False)
    select(gm, config.keep_float, "--keep-float")
