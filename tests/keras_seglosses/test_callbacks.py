"""The boundary-loss weight schedule of the Loss odyssey [004, Sec. 3.2]:
its values, and that a compiled training step sees every new weight."""

import keras
import numpy as np
import pytest

import keras_seglosses as ks
from keras_seglosses.callbacks import BoundaryWeightSchedule


def test_schedule_values():
    schedule = BoundaryWeightSchedule()
    alphas = [schedule.alpha_at(e) for e in range(120)]
    expected = [max(1.0 - 0.01 * e, 0.01) for e in range(120)]
    np.testing.assert_allclose(alphas, expected, atol=1e-12)
    assert alphas[99] == 0.01 and alphas[100] == 0.01 and alphas[0] == 1.0


def tiny_model():
    inputs = keras.Input((6, 6, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.backends
def test_compiled_fit_follows_the_schedule(rng):
    """With a zero learning rate the predictions stay fixed, so each epoch's
    loss is `alpha_e Dice + (1 - alpha_e) Boundary` of the same outputs: the
    compiled train and test steps must read the new alpha every epoch."""
    x = rng.normal(size=(2, 6, 6, 1)).astype("f4")
    y = (x > 0.2).astype("f4")
    model = tiny_model()
    loss = ks.DiceBoundary()
    jit = "auto" if keras.backend.backend() == "torch" else True
    model.compile(keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit)
    schedule = BoundaryWeightSchedule(start=1.0, step=0.5, minimum=0.2)
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[schedule],
                        validation_data=(x, y))
    pred = model.predict(x, verbose=0)
    dice = float(ks.Dice()(y, pred))
    boundary = float(ks.Boundary()(y, pred))
    alphas = [1.0, 0.5, 0.2]
    expected = [a * dice + (1 - a) * boundary for a in alphas]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(history.history["val_loss"], expected, rtol=1e-4, atol=1e-6)
    assert abs(float(keras.ops.convert_to_numpy(loss.alpha)) - 0.2) < 1e-7


def test_finds_the_compiled_loss_and_rejects_others(rng):
    model = tiny_model()
    model.compile("sgd", loss=ks.Dice())
    schedule = BoundaryWeightSchedule()
    schedule.set_model(model)
    with pytest.raises(ValueError, match="`loss`"):
        schedule.on_epoch_begin(0)
    with pytest.raises(ValueError, match="`loss`"):
        BoundaryWeightSchedule(loss=ks.Dice())
    loss = ks.DiceBoundary(alpha=0.5)
    model.compile("sgd", loss=loss)
    schedule.on_epoch_begin(3)
    assert abs(float(keras.ops.convert_to_numpy(loss.alpha)) - 0.97) < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [({"start": 1.5}, "`start`"), ({"step": -0.1}, "`step`"),
     ({"minimum": 2.0}, "`minimum`"), ({"start": 0.1, "minimum": 0.5}, "`minimum`")],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoundaryWeightSchedule(**kwargs)


def test_config():
    schedule = BoundaryWeightSchedule(start=0.9, step=0.05, minimum=0.1)
    clone = BoundaryWeightSchedule(**schedule.get_config())
    assert [clone.alpha_at(e) for e in range(20)] == [schedule.alpha_at(e) for e in range(20)]
