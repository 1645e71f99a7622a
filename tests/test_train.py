import json

import pytest
import torch

from edgecnn.checkpoint import load_checkpoint, load_weights
from edgecnn.errors import EdgecnnError
from edgecnn.models import create_model


# mobilenet_v2 (4.5 min on 2 cores) trains through the same code path as dsc_net: it is in
# the slow sweep, with its PTQ/QAT accuracy (test_quant_accuracy.py)
@pytest.mark.parametrize("name", ["dsc_net", pytest.param("mobilenet_v2", marks=pytest.mark.slow)])
def test_short_schedule_on_digits_reaches_95_percent(reference_checkpoint, name):
    directory = reference_checkpoint(name)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.95, metrics["val_accuracy"]
    assert metrics["epochs"] > 0 and metrics["train_seconds"] > 0
    config = json.loads((directory / "config.json").read_text())
    assert config["model"] == name and config["options"]["small_input"] is True
    assert config["preprocessing"]["input_size"] == [32, 32]
    assert config["preprocessing"]["class_names"] == [str(i) for i in range(10)]


def test_checkpoint_reloads_to_the_same_accuracy(reference_checkpoint, digits):
    from edgecnn.train import accuracy, to_tensors

    directory = reference_checkpoint("dsc_net")
    model, config = load_checkpoint(directory)
    x, y = to_tensors(digits.val_images, digits.val_labels, config.preprocessing)
    recorded = json.loads((directory / "metrics.json").read_text())["val_accuracy"]
    assert accuracy(model, x, y) == pytest.approx(recorded, abs=1e-9)


def test_checkpoint_that_does_not_fit_names_the_first_mismatched_key(reference_checkpoint):
    directory = reference_checkpoint("dsc_net")
    with pytest.raises(EdgecnnError, match=r"checkpoint does not fit the model: .*'stem.conv"):
        load_checkpoint(directory, model_name="mobilenet_v2")
    wider = create_model("dsc_net", num_classes=10, in_channels=1, small_input=True,
                         width_mult=2.0)
    with pytest.raises(EdgecnnError, match=r"'stem.conv.weight' has shape \(16, 1, 3, 3\), "
                                           r"the model expects \(32, 1, 3, 3\)"):
        load_weights(wider, directory / "checkpoint.pt")


def test_checkpoint_loading_never_executes_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    torch.save({"w": Evil()}, tmp_path / "checkpoint.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(EdgecnnError, match=r"not a tensors-only checkpoint \(holds a non-tensor "
                                           r"object (builtins\.)?exec; only tensors are read\)$"):
        load_weights(create_model("dsc_net"), tmp_path / "checkpoint.pt")


def test_a_model_that_needs_contiguous_tensors_trains_in_nchw(capsys):
    """`x.view(x.size(0), -1)` after a pool fails on channels_last tensors (training's
    faster layout) and runs in plain torch: fp32 training and QAT run it in NCHW, with one
    note naming the line (once a process), where training once stopped with a traceback;
    a model that runs channels_last keeps it. The probe changes no buffer (BN statistics,
    QAT's observer ranges)."""
    import re

    from user_models import TinyNet, ViewHead

    from edgecnn.quant.qat import prepare_qat, qat_finetune
    from edgecnn.quant.recipe import QAT
    from edgecnn.train import TrainConfig, memory_format, run_epochs

    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 16, 16), torch.randint(0, 10, (16,))
    layout, note = memory_format(ViewHead(), x[:2])
    assert layout == torch.contiguous_format
    assert re.fullmatch(r"note: user_models\.py:\d+ x = x\.view\(x\.size\(0\), -1\) needs "
                        r"contiguous tensors: training in NCHW \(channels_last is ~1\.7x faster "
                        r"for depthwise convs; x\.reshape or x\.flatten\(1\) allows it\)", note)
    assert memory_format(TinyNet(), x[:2]) == (torch.channels_last, "")
    config = TrainConfig(epochs=1, batch_size=8, augment=False)
    model = ViewHead()
    history = run_epochs(model, (x, y), config, description="train", show_progress=True)
    assert len(history) == 1
    prepared = prepare_qat(model.eval(), x[:2])
    buffers = {n: b.clone() for n, b in prepared.named_buffers()}
    assert memory_format(prepared, x[:2]) == (layout, note)  # the user's line, from the node
    assert all(torch.equal(buffers[n], b) for n, b in prepared.named_buffers())
    qat_finetune(prepared, (x, y), QAT(train=config), show_progress=True)
    assert capsys.readouterr().err.count(note) == 1
