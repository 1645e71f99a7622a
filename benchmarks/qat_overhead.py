"""QAT training-step time vs fp32 step time at the same batch size; PTQ calibration time.

    python benchmarks/qat_overhead.py [--model mobilenet_v2] [--batch-size 64] [--steps 10]

Both steps run the same thing edgecnn.train.run_epochs runs (channels_last,
AdamW, forward + backward + step) on digits in small-input mode (32 px). The
goal from the issue: QAT step <= 2.5x the fp32 step. Prints a JSON record.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from edgecnn.data import load
from edgecnn.models import create_model
from edgecnn.quant.calibrate import calibrate, convert, prepare_ptq
from edgecnn.quant.qat import prepare_qat
from edgecnn.train import model_options_for, preprocessing_for, to_tensors


def step_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
               steps: int, warmup: int = 2) -> list[float]:
    """Seconds per training step (forward, backward, AdamW step), after warm-up."""
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        start = (i * batch_size) % (len(x) - batch_size)
        xb = x[start:start + batch_size].contiguous(memory_format=torch.channels_last)
        yb = y[start:start + batch_size]
        begin = time.perf_counter()
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - begin)
    return times


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    begin = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = load("digits")
    preprocessing = preprocessing_for(dataset)
    x, y = to_tensors(dataset.train_images, dataset.train_labels, preprocessing)
    torch.manual_seed(0)
    model = create_model(args.model, **model_options_for(preprocessing)).eval()

    prepared_qat, prepare_qat_s = timed(prepare_qat, model, x[:2])
    fp32_model = copy.deepcopy(model)
    fp32: list[float] = []
    qat: list[float] = []
    for _ in range(2):  # alternate, so a change in machine load hits both alike
        fp32 += step_times(fp32_model, x, y, batch_size=args.batch_size, steps=args.steps // 2)
        qat += step_times(prepared_qat, x, y, batch_size=args.batch_size, steps=args.steps // 2)

    prepared_ptq, prepare_ptq_s = timed(prepare_ptq, model, x[:2])
    images, calibrate_s = timed(calibrate, prepared_ptq, x, batches=args.calib_batches,
                                batch_size=args.batch_size)
    _, convert_s = timed(convert, prepared_ptq)

    fp32_step, qat_step = statistics.median(fp32), statistics.median(qat)
    print(json.dumps({
        "model": args.model, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "fp32_step_s": round(fp32_step, 4), "qat_step_s": round(qat_step, 4),
        "qat_overhead": round(qat_step / fp32_step, 2), "goal": 2.5,
        "prepare_qat_s": round(prepare_qat_s, 2), "prepare_ptq_s": round(prepare_ptq_s, 2),
        "calibrate_s": round(calibrate_s, 2), "calib_images": images,
        "calibrate_ms_per_image": round(1000 * calibrate_s / images, 3),
        "convert_s": round(convert_s, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
