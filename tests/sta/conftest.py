"""Fixtures for the STA tests (helpers live in ``sta_helpers``)."""

from __future__ import annotations

import pytest
import torch
from sta_helpers import amplify

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def sta_model():
    from sta_models.networks.sta import STA

    torch.manual_seed(0)
    return amplify(STA("resnet18", channels=8, use_cache=False)).eval()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    """(feature_dir, pseudo_gt_dir, splits) of hand-written files, shared by the STA tests."""
    from sta_helpers import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("sta-data"))


@pytest.fixture(scope="session")
def trained_sta(tiny_data, tmp_path_factory: pytest.TempPathFactory):
    """A 2-epoch STA run on the tiny data: (TrainResult, out_dir, [EpochMetrics emitted])."""
    from sta_helpers import tiny_config

    from sta_models.callbacks import Callbacks
    from sta_models.sta_training import train_sta

    feats, gts, splits = tiny_data
    out = tmp_path_factory.mktemp("sta-run")
    seen: list = []
    result = train_sta(splits, feats, gts, out, tiny_config(epochs=2), Callbacks(epoch_end=seen.append),
                       channels=8, use_cache=False)
    return result, out, seen
