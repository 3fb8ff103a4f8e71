"""Deep supervision: target reduction against numpy, the wrapper against
its definition, and the `compile` path on every backend with
`models3d.isensee2017(deep_supervision=True)`."""

import keras
import numpy as np
import pytest
from _references import perturb_ignored, random_ignore_mask

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


# ------------------------------------------------------------- ignore mask
def np_down_masked(y, factor, n_classes, mask_slot):
    """`np_down` of the target zeroed at ignored voxels, with the mask
    min-pooled: a coarse voxel counts only if all its fine voxels count."""
    lo, hi = n_classes * (1 + mask_slot), n_classes * (2 + mask_slot)
    mask = y[..., lo:hi]
    tiled = np.concatenate([mask] * (y.shape[-1] // n_classes), -1)
    down = np_down(y * tiled, factor, n_classes)
    b, *spatial, _ = mask.shape
    shape = [b]
    for size, f in zip(spatial, factor):
        shape += [size // f, f]
    blocks = mask.reshape(*shape, n_classes)
    down[..., lo:hi] = blocks.min(tuple(range(2, 2 * len(spatial) + 1, 2)))
    return down


def np_dice_counted(y, p, m, smooth):
    """Dice loss per sample over the counted voxels (`batch=False`)."""
    axes = tuple(range(1, y.ndim - 1))
    num = 2 * (m * y * p).sum(axes) + smooth
    return (1 - num / ((m * y).sum(axes) + (m * p).sum(axes) + smooth)).mean(-1)


def _masked_case(rng, shape=(2, 8, 8, 8, 1)):
    y = (rng.random(shape) > 0.6).astype("f4")
    m = rng.uniform(-1, 1, shape).astype("f4")
    mask = random_ignore_mask(rng, shape, fraction=0.05).astype("f4")
    return y, m, mask


def test_downsample_targets_min_pools_the_mask_and_zeroes_ignored_voxels(rng):
    y, m, mask = _masked_case(rng, (2, 8, 6, 4, 2))
    for slot, packed in ((1, ks.pack_targets(y, m, mask, m)), (0, ks.pack_targets(y, mask))):
        for spatial, factor in (((4, 3, 4), (2, 2, 1)), ((2, 3, 2), (4, 2, 2))):
            got = keras.ops.convert_to_numpy(ks.downsample_targets(packed, spatial, 2, slot))
            want = np_down_masked(np.asarray(packed), factor, 2, slot)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            coarse_mask = want[..., 2 * (1 + slot):2 * (2 + slot)]
            assert 0 < coarse_mask.mean() < 1
            # what lies under ignored fine voxels reaches no coarse voxel
            y2, m2 = perturb_ignored(rng, mask, y, m)
            other = (ks.pack_targets(y2, m2, mask, m2) if slot else ks.pack_targets(y2, mask))
            again = keras.ops.convert_to_numpy(ks.downsample_targets(other, spatial, 2, slot))
            np.testing.assert_allclose(again, got, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="ignore mask at packed map slot 2.*pack_targets"):
        ks.downsample_targets(ks.pack_targets(y, mask), (4, 3, 4), 2, 2)


def test_masked_levels_are_the_loss_of_the_counted_coarse_voxels(rng):
    y, m, mask = _masked_case(rng)
    outputs = [rng.uniform(0.05, 0.95, (2, 8 // f, 8 // f, 8 // f, 1)).astype("f4")
               for f in (1, 2, 4)]
    target = np.asarray(ks.pack_targets(y, m, mask))
    loss = ks.DeepSupervision(ks.Dice(batch=False, smooth=0.5), mask_index=1)
    expected = 0.0
    for w, f, p in zip([1, 0.5, 0.25], (1, 2, 4), outputs):
        down = np_down_masked(target, (f,) * 3, 1, 1)
        expected = expected + w * np_dice_counted(down[..., :1], p, down[..., 2:], 0.5)
    got = keras.ops.convert_to_numpy(loss.call(target, outputs))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    y2, m2 = perturb_ignored(rng, mask, y, m)
    other = ks.pack_targets(y2, m2, mask)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.call(other, outputs)), got,
                               rtol=1e-6)
    # compile_arguments carries the mask to every level
    levels = loss.compile_arguments(3)["loss"]
    total = sum(w * keras.ops.convert_to_numpy(level.call(target, p))
                for w, level, p in zip([1, 0.5, 0.25], levels, outputs))
    np.testing.assert_allclose(total, got, rtol=1e-6)


@pytest.mark.backends
def test_masked_deep_supervision_compiled_has_no_gradient_at_ignored_voxels(rng, jit, autodiff):
    y, m, mask = _masked_case(rng)
    target = np.asarray(ks.pack_targets(y, m, mask))
    loss = ks.DeepSupervision(ks.RewardPenaltyDice(batch=False), mask_index=1)
    fine = rng.uniform(0.05, 0.95, y.shape).astype("f4")
    coarse = rng.uniform(0.05, 0.95, (2, 4, 4, 4, 1)).astype("f4")
    value = keras.ops.convert_to_numpy(jit(loss.call)(target, [fine, coarse]))
    plain = ks.RewardPenaltyDice(batch=False, mask_index=1)
    down = np_down_masked(target, (2, 2, 2), 1, 1)
    want = (keras.ops.convert_to_numpy(plain.call(target, fine))
            + 0.5 * keras.ops.convert_to_numpy(plain.call(down, coarse)))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(target, [fine, x])))(coarse)
    coarse_mask = down[..., 2:]
    assert 0 < coarse_mask.mean() < 1
    assert np.all(np.isfinite(grad)) and np.all(grad[coarse_mask == 0] == 0.0)
    assert np.abs(grad[coarse_mask > 0]).max() > 0


def test_mask_index_goes_to_a_copy_of_the_wrapped_loss():
    inner = ks.RewardPenaltyDice()
    for cls in (ks.DeepSupervision, ks.DownsampledTarget):
        loss = cls(inner, mask_index=1)
        assert inner.mask_index is None and loss.loss.mask_index == 1 and loss.mask_index == 1
        assert [tuple(r) for r in ks.map_reads(loss, 1)] == [("rpmap", 0, 1), ("mask", 1, 1)]
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert again.get_config() == loss.get_config() and again.loss.mask_index == 1
        # the wrapped loss's own mask is kept; a different one is refused
        assert cls(ks.Dice(mask_index=2)).mask_index == 2
        assert cls(ks.Dice(mask_index=2), mask_index=2).mask_index == 2
        for make, match in (
            (lambda: cls(ks.Dice(mask_index=2), mask_index=3), "`mask_index`.*mask_index=2"),
            (lambda: cls(inner, mask_index=0), "`mask_index`"),  # the rpmap's slot
            (lambda: cls(ks.Dice(), mask_index=-1), "`mask_index`"),
            (lambda: cls(keras.losses.MeanSquaredError(), mask_index=0),
             "`mask_index`.*MeanSquaredError"),
            (lambda: cls(ks.Compound([(ks.Dice(mask_index=0), 1.0),
                                      (ks.Boundary(mask_index=1), 1.0)])), r"slots \[0, 1\]"),
        ):
            with pytest.raises(ValueError, match=match):
                make()


# ------------------------------------------- a Compound of masked members
def np_ce_counted(y, p, m):
    """Binary cross entropy per sample, the mean over the counted voxels."""
    axes = tuple(range(1, y.ndim))
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return (m * ce).sum(axes) / m.sum(axes)


def _masked_compound():
    return ks.Compound([(ks.Dice(batch=False, smooth=0.5, mask_index=1), 1.0),
                        (ks.CrossEntropy(mask_index=1), 0.5)])


def np_masked_compound(target, p, factor):
    """`_masked_compound` on `target` (labels, rpmap, mask) reduced by
    `factor`, in numpy."""
    down = np_down_masked(target, (factor,) * 3, 1, 1)
    y, m = down[..., :1], down[..., 2:]
    return np_dice_counted(y, p, m, 0.5) + 0.5 * np_ce_counted(y, p, m)


def test_wrapped_compound_of_masked_members_survives_serialization(rng):
    y, m, mask = _masked_case(rng)
    target = np.asarray(ks.pack_targets(y, m, mask))
    outputs = [rng.uniform(0.05, 0.95, (2, 8 // f, 8 // f, 8 // f, 1)).astype("f4")
               for f in (1, 2)]
    expected = np_masked_compound(target, outputs[0], 1) + 0.5 * np_masked_compound(
        target, outputs[1], 2)
    for loss, args in ((ks.DeepSupervision(_masked_compound()), (target, outputs)),
                       (ks.DownsampledTarget(_masked_compound()), (target, outputs[1]))):
        assert loss.mask_index == 1
        want = expected if isinstance(loss, ks.DeepSupervision) else np_masked_compound(
            target, outputs[1], 2)
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
        for reader in (loss, again):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(reader.call(*args)), want,
                                       rtol=1e-5)


@pytest.mark.backends
def test_model_compiled_with_a_masked_compound_saves_and_loads(rng, tmp_path):
    y, m, mask = _masked_case(rng)
    target = np.asarray(ks.pack_targets(y, m, mask))
    x = rng.random(y.shape).astype("f4")
    inputs = keras.Input((8, 8, 8, 1))
    fine = keras.layers.Conv3D(1, 1, activation="sigmoid", name="fine")(inputs)
    coarse = keras.layers.AveragePooling3D(2, name="coarse")(fine)
    deep = ks.DeepSupervision(_masked_compound())
    cases = ((keras.Model(inputs, fine), {"loss": deep}, 1),
             (keras.Model(inputs, [fine, coarse]), deep.compile_arguments(2), 2))
    for i, (model, compile_arguments, n_outputs) in enumerate(cases):
        model.compile(optimizer="sgd", **compile_arguments)
        preds = model.predict(x, verbose=0, batch_size=2)
        preds = preds if n_outputs > 1 else [preds]
        want = sum(0.5**level * np_masked_compound(target, p, 2**level).mean()
                   for level, p in enumerate(preds))
        path = str(tmp_path / f"model{i}.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        saved_losses = model.loss if n_outputs > 1 else [model.loss]
        loaded_losses = loaded.loss if n_outputs > 1 else [loaded.loss]
        assert [type(l) for l in loaded_losses] == [type(l) for l in saved_losses]
        assert ([l.get_config() for l in loaded_losses]
                == [l.get_config() for l in saved_losses])
        for reader in (model, loaded):
            value = reader.evaluate(x, [target] * n_outputs, verbose=0, batch_size=2)
            value = value[0] if isinstance(value, list) else value
            assert value == pytest.approx(float(want), rel=1e-5)


def test_compound_of_masked_and_unmasked_members_is_refused():
    """The target is zeroed at ignored voxels before pooling, which would
    change the labels an unmasked member counts: the mix is refused."""
    mixed = ks.Compound([(ks.Dice(mask_index=1), 1.0), (ks.CrossEntropy(), 1.0)])
    nested = ks.Compound([(ks.DiceCE(mask_index=1), 1.0), (ks.Focal(), 1.0)])
    match = (r"`loss`.*ignore mask.*slot 1.*Dice\(name='dice'\).*"
             r"CrossEntropy\(name='cross_entropy'\).*`mask_index=1`")
    for cls in (ks.DeepSupervision, ks.DownsampledTarget):
        with pytest.raises(ValueError, match=match):
            cls(mixed)
        with pytest.raises(ValueError, match=match):
            cls(mixed, mask_index=1)
        with pytest.raises(ValueError, match=r"Focal\(name='focal'\).*`mask_index=1`"):
            cls(nested)
        # every member masked, or none: accepted
        assert cls(ks.Compound([(ks.Dice(mask_index=1), 1.0),
                                (ks.CrossEntropy(mask_index=1), 1.0)])).mask_index == 1
        assert cls(ks.Compound([(ks.Dice(), 1.0), (ks.CrossEntropy(), 1.0)])).mask_index is None
