"""Deep supervision: target reduction against numpy, the wrapper against
its definition, and the `compile` path on every backend with
`models3d.isensee2017(deep_supervision=True)`."""

import keras
import numpy as np
import pytest

import keras_seglosses as ks
import models3d


def np_down(y, factor, n_classes):
    """Non-overlapping max (labels) and mean (maps) pooling by reshaping."""
    b, *spatial, k = y.shape
    shape = [b]
    for s, f in zip(spatial, factor):
        shape += [s // f, f]
    blocks = y.reshape(*shape, k)
    axes = tuple(range(2, 2 * len(spatial) + 1, 2))
    return np.concatenate([blocks[..., :n_classes].max(axes), blocks[..., n_classes:].mean(axes)],
                          -1)


def test_downsample_targets_pools_labels_by_max_and_maps_by_mean(rng):
    y = (rng.random((2, 8, 6, 4, 1)) > 0.8).astype("f4")
    m = rng.uniform(-1, 1, y.shape).astype("f4")
    packed = ks.pack_targets(y, m)
    for spatial, factor in (((4, 3, 4), (2, 2, 1)), ((2, 3, 2), (4, 2, 2)), ((8, 6, 4), (1, 1, 1))):
        got = keras.ops.convert_to_numpy(ks.downsample_targets(packed, spatial, 1))
        np.testing.assert_allclose(got, np_down(np.asarray(packed), factor, 1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"cannot reduce targets of spatial shape \(8, 6, 4\)"):
        ks.downsample_targets(packed, (3, 3, 4), 1)


def test_wrapper_is_the_weighted_sum_over_levels(rng):
    y = (rng.random((3, 8, 8, 8, 1)) > 0.7).astype("f4")
    outputs = [rng.uniform(0.05, 0.95, (3, 8 // f, 8 // f, 8 // f, 1)).astype("f4")
               for f in (1, 2, 4)]
    for weights, w in (("exp", [1, 0.5, 0.25]), ("same", [1, 1, 1]), ([0.2, 0.3, 0.5],
                                                                     [0.2, 0.3, 0.5])):
        loss = ks.DeepSupervision(ks.Dice(batch=False), weights=weights)
        got = keras.ops.convert_to_numpy(loss.call(y, outputs))
        expected = sum(
            wl * keras.ops.convert_to_numpy(ks.Dice(batch=False).call(np_down(y, (f,) * 3, 1), p))
            for wl, f, p in zip(w, (1, 2, 4), outputs))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    rpdl = ks.DeepSupervision(ks.RewardPenaltyDice(batch=False))
    m = rng.uniform(-1, 1, y.shape).astype("f4")
    packed = ks.pack_targets(y, m)
    expected = sum(
        wl * keras.ops.convert_to_numpy(
            ks.RewardPenaltyDice(batch=False).call(np_down(np.asarray(packed), (f,) * 3, 1), p))
        for wl, f, p in zip([1, 0.5, 0.25], (1, 2, 4), outputs))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rpdl.call(packed, outputs)), expected,
                               rtol=1e-6)


def test_isensee_deep_supervision_outputs_share_the_plain_models_weights(rng):
    kwargs = dict(input_shape=(16, 16, 16, 1), depth=4, n_base_filters=2, dropout_rate=0.0)
    deep = models3d.isensee2017(deep_supervision=True, **kwargs)
    plain = models3d.isensee2017(**kwargs)
    assert [tuple(o.shape) for o in deep.outputs] == [(None, 16, 16, 16, 1), (None, 8, 8, 8, 1),
                                                      (None, 4, 4, 4, 1)]
    plain.set_weights(deep.get_weights())
    x = rng.random((1, 16, 16, 16, 1)).astype("f4")
    np.testing.assert_allclose(deep.predict(x, verbose=0)[0], plain.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_segmentation_levels >= 2"):
        models3d.isensee2017(deep_supervision=True, n_segmentation_levels=1, **kwargs)


@pytest.mark.backends
def test_compile_arguments_train_and_equal_the_wrapper(rng):
    keras.utils.set_random_seed(1)
    model = models3d.isensee2017(input_shape=(16, 16, 16, 1), depth=4, n_base_filters=2,
                                 dropout_rate=0.0, deep_supervision=True)
    x = rng.random((2, 16, 16, 16, 1)).astype("f4")
    y = (x > 0.6).astype("f4")
    m = np.where(y > 0, 1.0, -0.5).astype("f4")
    target = np.asarray(ks.pack_targets(y, m))
    wrapper = ks.DeepSupervision(ks.RewardPenaltyDice(batch=False))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), **wrapper.compile_arguments(3))
    evaluated = model.evaluate(x, [target] * 3, verbose=0, batch_size=2)
    total = evaluated[0] if isinstance(evaluated, list) else evaluated
    expected = float(wrapper(target, model.predict(x, verbose=0, batch_size=2)))
    assert total == pytest.approx(expected, rel=1e-5)
    history = model.fit(x, [target] * 3, epochs=2, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_config_round_trip_and_bad_weights():
    loss = ks.DeepSupervision(ks.RewardPenaltyDice(smooth=0.5), weights=[1.0, 0.4])
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is ks.DeepSupervision and again.weights == [1.0, 0.4]
    assert type(again.loss) is ks.RewardPenaltyDice and again.loss.smooth == 0.5
    level = keras.losses.deserialize(keras.losses.serialize(ks.DownsampledTarget(ks.Dice())))
    assert type(level) is ks.DownsampledTarget and type(level.loss) is ks.Dice
    with pytest.raises(ValueError, match="`weights`"):
        ks.DeepSupervision(ks.Dice(), weights="log")
    with pytest.raises(ValueError, match="`weights`"):
        ks.DeepSupervision(ks.Dice(), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="Expected 3 numbers"):
        ks.DeepSupervision(ks.Dice(), weights=[1.0, 0.5]).compile_arguments(3)
