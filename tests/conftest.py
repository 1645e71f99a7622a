"""Shared fixtures: real digits data, fp32 references trained once per session, tiny artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- data and reference checkpoints ---------------------------------------------------------

#: Short schedules that reach >= 95% validation accuracy on digits (small-input, 32 px).
REFERENCE_SCHEDULES = {
    "dsc_net": {"epochs": 10, "lr": 5e-3},
    "mobilenet_v1": {"epochs": 5, "lr": 2e-3},
    "mobilenet_v2": {"epochs": 5, "lr": 2e-3},
    "efficientnet_lite0": {"epochs": 5, "lr": 2e-3},
    "efficientnet_b0": {"epochs": 5, "lr": 2e-3},
}


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset with the default seeded split."""
    from edgecnn.data import load

    return load("digits")


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """`reference_checkpoint(name) -> Path`: an fp32 checkpoint dir trained on digits.

    Each model is trained once per session and shared by the tests that ask for it.
    """
    trained: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in trained:
            from edgecnn.pipeline import train_reference
            from edgecnn.train import TrainConfig

            directory = tmp_path_factory.mktemp(f"reference_{name}")
            train_reference(name, "digits", directory, TrainConfig(**REFERENCE_SCHEDULES[name]),
                            show_progress=False)
            trained[name] = directory
        return trained[name]

    return get
