"""Every metric declares whether higher or lower is better (SPEC.md Sec. 5),
so Keras' callbacks monitor it with `mode="auto"` (no `mode=`)."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import keras_seglosses as ks

# What the metric measures decides the direction: overlaps are maximized,
# distances minimized.
EXPECTED = {"Dice": "up", "RPD": "up", "NSD": "up", "HD95": "down", "ASD": "down",
            "Sensitivity": "up", "Specificity": "up", "Precision": "up"}


def _metric_classes():
    return {
        name: obj
        for name in ks.metrics.__all__
        if inspect.isclass(obj := getattr(ks.metrics, name)) and issubclass(obj, keras.metrics.Metric)
    }


def test_every_metric_declares_its_direction():
    classes = _metric_classes()
    assert set(EXPECTED) <= set(classes)
    for name, cls in classes.items():
        # Keras reads `_direction` and takes anything but "up" for "down".
        assert getattr(cls, "_direction", None) in ("up", "down"), name
    assert {name: classes[name]._direction for name in EXPECTED} == EXPECTED


@pytest.mark.backends
def test_callbacks_infer_the_direction_in_fit(rng, tmp_path):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    y = (x > 0.3).astype("float32")
    ann = (rng.random((3,) + y.shape) > 0.6) | y[None].astype(bool)
    m = np.stack([ks.reward_penalty_map(ann[:, b]) for b in range(len(y))])
    target = ks.pack_targets(y, m)

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.05),
        loss=ks.Dice(),
        metrics=[ks.metrics.Dice(), ks.metrics.RPD(), ks.metrics.HD95(), ks.metrics.NSD(),
                 ks.metrics.ASD()],
        jit_compile="auto" if keras.backend.backend() == "torch" else True,
    )
    # None of them is given `mode=`: each must find the metric's direction.
    callbacks = {
        "dice": keras.callbacks.EarlyStopping(monitor="val_dice", patience=100),
        "hd95": keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_hd95", save_best_only=True
        ),
        "nsd": keras.callbacks.ReduceLROnPlateau(monitor="val_nsd", patience=100),
        "rpd": keras.callbacks.EarlyStopping(monitor="val_rpd", patience=100),
        "asd": keras.callbacks.EarlyStopping(monitor="val_asd", patience=100),
    }
    for cb in callbacks.values():
        assert cb.monitor_op is None  # decided only once the fit has run an epoch
    history = model.fit(
        x, target, batch_size=2, epochs=3, verbose=0, validation_data=(x, target),
        callbacks=list(callbacks.values()),
    ).history

    comparisons = {"up": ops.greater, "down": ops.less}
    best = {"up": max, "down": min}
    for key, cb in callbacks.items():
        direction = {"dice": "up", "rpd": "up", "nsd": "up", "hd95": "down", "asd": "down"}[key]
        assert cb.monitor_op is comparisons[direction], key
        if hasattr(cb, "best"):
            # The callback kept the best value of the direction, not of the other.
            assert cb.best == pytest.approx(best[direction](history[f"val_{key}"]), rel=1e-6), key
    assert (tmp_path / "best.keras").is_file()
