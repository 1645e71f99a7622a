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
