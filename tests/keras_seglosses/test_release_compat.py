"""Configs and `.keras` files written by release 0.1.0 still load and give
the values 0.1.0 computed (files in `tests/data`, written by the 0.1.0 code
on the inputs stored beside them)."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_seglosses as ks

DATA = Path(__file__).resolve().parents[1] / "data"
SAVED = json.loads((DATA / "release_0_1_0_losses.json").read_text())


def _inputs():
    arrays = np.load(DATA / "release_0_1_0_inputs.npz")
    return arrays["y"], arrays["p"]


@pytest.mark.parametrize("name", sorted(SAVED))
def test_loss_config_of_0_1_0_loads_with_its_value(name):
    y, p = _inputs()
    loss = keras.saving.deserialize_keras_object(SAVED[name]["config"])
    config = SAVED[name]["config"]["config"]
    if config.get("map_index") is not None:
        # 0.1.0 defaulted `map_index` to 0 and fell back to computing the
        # map when the slot was empty; a saved 0.1.0 config keeps reading
        # slot 0, so it gets the map there (the value 0.1.0 computed)
        y = ks.pack_targets(y, np.asarray(ks.signed_distance_map(y)) if "boundary" in name
                            else np.asarray(ks.boundary_distance(y)))
    np.testing.assert_allclose(float(loss(y, p)), SAVED[name]["value"], rtol=1e-5)


def test_keras_file_of_0_1_0_loads():
    model = keras.models.load_model(DATA / "release_0_1_0_dice_boundary.keras")
    assert isinstance(model.loss, ks.DiceBoundary)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model.loss.alpha)), 0.3)
    assert model.loss.members[1][0].map_index == 0
