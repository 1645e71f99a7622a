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
from edgecnn.quant.bias_correction import correct_biases, float_weights
from edgecnn.quant.bn_fold import set_dropout
from edgecnn.quant.equalize import equalize
from edgecnn.quant.graph import add_int32_biases, draws_random, source_line
from edgecnn.quant.precision import keep_float, mark_int16
from edgecnn.quant.quantizer import (
    TFLiteInt8Quantizer,
    functionalize_inplace,
    keep_shared_convs_unfolded,
    resolve_conv_padding,
)
from edgecnn.quant.recipe import PTQ
from edgecnn.quant.spec import QuantConfig


def batch_dim() -> dict[int, torch.export.Dim]:
    return {0: torch.export.Dim("batch", min=1, max=65536)}


def capture(model: nn.Module, example_input: torch.Tensor, *, train: bool) -> GraphModule:
    """torch.export a copy of `model` (batch dimension dynamic) in train or eval mode.

    PTQ captures in eval mode (BN uses running statistics and is folded by
    prepare); QAT in train mode (BN kept, then rewritten into the simulated fold).
    In-place ops on activations become functional (`functionalize_inplace`); string conv
    padding ('same') becomes explicit (`resolve_conv_padding`); a BN after a conv with
    other readers stays unfolded (`keep_shared_convs_unfolded`).

    Raises EdgecnnError naming the node and where the model made it when the program
    draws random numbers outside the dropout family (`graph.draws_random`): in train
    mode stochastic depth (timm's DropPath) and the like, which nothing can switch off in
    the captured graph (QAT would ship random or frozen masks); in eval mode any.
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
    functionalize_inplace(gm)  # first: dropout_ becomes dropout, which train / eval switch
    random = next((n for n in gm.graph.nodes if draws_random(n)), None)
    if random is not None:
        line = source_line(random)
        where = f" ({line})" if line else ""
        if train:
            raise EdgecnnError(
                f"QAT captures the model in train mode, where node '{random.name}'{where} "
                "draws random numbers outside nn.Dropout (stochastic depth / DropPath?): build "
                "the model with drop_path_rate=0 for QAT, or use PTQ")
        raise EdgecnnError(f"node '{random.name}'{where} draws random numbers in eval mode "
                           "(torch.rand / randn_like?); edgecnn needs a deterministic model "
                           "to export")
    resolve_conv_padding(gm)
    keep_shared_convs_unfolded(gm)
    return gm


def prepare_ptq(model: nn.Module, example_input: torch.Tensor,
                config: QuantConfig | None = None, *, cle: bool = False) -> GraphModule:
    """Capture in eval mode, fold BN, annotate, insert observers.

    With `cle`, BN is folded and conv pairs equalized on the captured fp32 graph first
    (`equalize.equalize`); what it did is in the result's `meta["ptq"]["cle"]`.
    """
    gm = capture(model, example_input, train=False)
    record = {}
    if cle:
        record["cle"] = equalize(gm).to_dict()
    prepared = prepare_pt2e(gm, TFLiteInt8Quantizer(config, is_qat=False))
    prepared.meta["ptq"] = record
    return prepared


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
def _order(n: int, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The calibration images: the first `batches` x `batch_size` of a seeded shuffle."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:batches * batch_size]


def calibrate(prepared: GraphModule, x, *, batches: int = 32,
              batch_size: int = 64, seed: int = 0, show_progress: bool = False) -> int:
    """Run up to `batches` batches of a seeded shuffle of `x` through the observers.

    x: (N, C, H, W) inputs, or a torch Dataset of (input, label) items (only the images
    calibration uses are decoded). Returns the number of images seen.
    """
    if batches < 1 or batch_size < 1:
        raise EdgecnnError(f"calibration needs batches >= 1 and batch size >= 1, "
                           f"got {batches} and {batch_size}")
    order = _order(len(x), batches, batch_size, seed)
    steps = math.ceil(len(order) / batch_size)
    with progress_bar("calibrate", total=steps, enabled=show_progress) as bar:
        for i, xb in enumerate(_batches(x, order, batch_size)):
            prepared(xb)
            bar.advance(f"{min((i + 1) * batch_size, len(order))} images")
    return len(order)


def convert(prepared: GraphModule, *, corrected_on: torch.Tensor | None = None,
            batches: int = 32, batch_size: int = 64, seed: int = 0) -> GraphModule:
    """Observers -> explicit quantize / dequantize; every bias int32 (see add_int32_biases).
    Every dropout is switched off first (`bn_fold.set_dropout`): the converted program is
    for inference, and its exports must not draw random masks.

    corrected_on: images (N, C, H, W) or a Dataset, for empirical bias correction
    between convert and the int32 biases (`bias_correction.correct_biases`, the same
    seeded `batches` x `batch_size` images as `calibrate`); None: no correction. The result's
    `meta["ptq"]` records what was done (with `prepare_ptq`'s CLE record).
    """
    record = dict(prepared.meta.get("ptq") or {})
    set_dropout(prepared, False)
    weights = float_weights(prepared) if corrected_on is not None else {}
    converted = convert_pt2e(prepared.to(memory_format=torch.contiguous_format))
    if corrected_on is not None:
        order = _order(len(corrected_on), batches, batch_size, seed)
        record["bias_correction"] = correct_biases(
            converted, weights, _batches(corrected_on, order, batch_size))
    add_int32_biases(converted)
    converted.meta["ptq"] = record
    return converted


def ptq(model: nn.Module, example_input: torch.Tensor, x, *,
        config: QuantConfig | None = None, recipe: PTQ = PTQ(),
        show_progress: bool = False) -> GraphModule:
    """Post-training quantization as `recipe` says: prepare (with CLE), calibrate on `x`
    (inputs, or a Dataset of (input, label) items), convert (bias correction on the
    calibration images)."""
    seed = 0 if recipe.seed is None else recipe.seed
    prepared = prepare_ptq(model, example_input, config, cle=recipe.cle)
    calibrate(prepared, x, batches=recipe.calib_batches, batch_size=recipe.batch_size,
              seed=seed, show_progress=show_progress)
    return convert(prepared, corrected_on=x if recipe.bias_correction else None,
                   batches=recipe.calib_batches, batch_size=recipe.batch_size, seed=seed)


def check_patterns(model, example_input, config) -> None:
    """Capture `model` (eval mode, left unchanged) and check that every pattern of
    `config` (a QuantConfig) selects a node, as the quantizer will select them (no node
    both float and int16): the seconds-long check `export --int8` runs before training.
    Raises ParameterError naming the flag (see `precision.select`, `mark_int16`)."""
    if not config.keep_float and not config.int16:
        return
    gm = capture(model, example_input, train=False)
    keep_float(gm, config.keep_float)
    mark_int16(gm, config.int16)
