"""`cmseg.registry`: loss names from the library, aliases, targets."""

import inspect
import json

import keras
import numpy as np
import pytest

import keras_seglosses
from cmseg import registry


def test_every_exported_loss_class_has_its_snake_case_name():
    classes = [
        getattr(keras_seglosses.losses, n)
        for n in keras_seglosses.losses.__all__
        if isinstance(getattr(keras_seglosses.losses, n), type)
        and issubclass(getattr(keras_seglosses.losses, n), keras.losses.Loss)
    ]
    names = registry.loss_names()
    assert names[:3] == ("wcel", "dl", "rpdl")
    for cls in classes:
        assert registry.loss_class(registry.snake_case(cls.__name__)) is cls
    assert len(names) == 3 + len(classes)


@pytest.mark.parametrize("camel, snake", [("RewardPenaltyDice", "reward_penalty_dice"),
                                          ("HD95Loss", "hd95_loss"), ("IoU", "io_u"),
                                          ("DiceCE", "dice_ce"), ("TopK", "top_k")])
def test_snake_case(camel, snake):
    assert registry.snake_case(camel) == snake


def test_paper_aliases_and_targets():
    assert registry.loss_class("wcel") is keras_seglosses.WeightedBinaryCrossentropy
    assert registry.loss_class("dl") is keras_seglosses.Dice
    assert registry.loss_class("rpdl") is keras_seglosses.RewardPenaltyDice
    targets = lambda name, **kw: registry.loss_targets(registry.make_loss(name, kw))
    assert targets("rpdl") == "rpdl"
    assert targets("legacy_reward_penalty_dice") == "legacy"
    assert targets("dl") == "plain"
    assert targets("wcel") == "plain"
    # maps a loss can compute are computed, so it needs plain labels ...
    assert targets("boundary") == targets("region_wise") == targets("dice_hd") == "plain"
    # ... and a compound needs what its members read
    rpdl_bd = [[keras.saving.serialize_keras_object(keras_seglosses.RewardPenaltyDice()), 1.0],
               [keras.saving.serialize_keras_object(keras_seglosses.Boundary()), 1.0]]
    assert targets("compound", losses=rpdl_bd) == "rpdl"
    # a map the pipeline cannot pack is refused with the reason
    with pytest.raises(ValueError, match="packs only the reward-penalty map"):
        targets("boundary", map_index=0)


def test_class_weight_by_class_not_alias():
    """`weighted_binary_crossentropy` is `wcel`: both take the fold's ratio."""
    assert registry.takes_pos_weight("wcel")
    assert registry.takes_pos_weight("weighted_binary_crossentropy")
    assert not registry.takes_pos_weight("dl")
    loss = registry.make_loss("weighted_binary_crossentropy", pos_weight=24.0)
    assert loss.pos_weight == 24.0
    # an explicit --loss-config value wins
    assert registry.make_loss("wcel", {"pos_weight": 3.0}, pos_weight=24.0).pos_weight == 3.0


def test_make_loss():
    loss = registry.make_loss("wcel", pos_weight=24.0)
    assert loss.get_config()["pos_weight"] == 24.0
    assert registry.make_loss("dl", {"smooth": 1e-5}).get_config()["smooth"] == 1e-5
    with pytest.raises(ValueError, match="Accepted arguments: .*smooth"):
        registry.make_loss("dl", {"smoothing": 1.0})
    with pytest.raises(ValueError, match="Expected one of wcel, dl, rpdl"):
        registry.loss_class("focal_dice_xyz")


def test_valid_folds():
    assert registry.valid_folds("bone") == tuple(range(1, 10))
    assert registry.valid_folds("surgeon") == tuple(range(1, 8))
    assert registry.valid_folds("bone", n_bones=3, n_surgeons=2) == (1, 2, 3)
    with pytest.raises(ValueError, match="bone, surgeon"):
        registry.valid_folds("patient")


@pytest.fixture(scope="module")
def batches():
    """One batch of each target layout, as `cm_dataset` packs it for training."""
    from cm_dataset import make_dataset, synthetic

    data = synthetic.generate(n_bones=2, n_surgeons=3, size=16, seed=1)
    return {
        t: next(iter(make_dataset(data, 1, 1, batch_size=2, targets=t, augment=None)))
        for t in ("plain", "rpdl", "legacy")
    }


def _required_arguments(name):
    params = inspect.signature(registry.loss_class(name)).parameters.values()
    return [p.name for p in params if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@pytest.mark.parametrize("name", registry.loss_names())
def test_every_name_computes_on_the_targets_it_is_given(name, batches):
    """Each `--loss` builds with its defaults and gives a finite value on the
    targets `train` packs for it (a loss handed the wrong layout raises);
    one with required arguments says which (`--loss-config`)."""
    required = _required_arguments(name)
    if required:
        with pytest.raises(ValueError, match=f"loss_config.*{required[0]}"):
            registry.make_loss(name)
        return
    x, y = batches[registry.loss_targets(registry.make_loss(name))]
    y = keras.ops.convert_to_numpy(y)
    pred = np.random.default_rng(0).uniform(0.05, 0.95, y.shape[:-1] + (1,)).astype("float32")
    value = registry.make_loss(name, pos_weight=20.0)(y, pred)
    assert np.isfinite(float(keras.ops.convert_to_numpy(value)))


def test_compound_from_json_config(batches):
    members = [[keras.saving.serialize_keras_object(keras_seglosses.Dice()), 1.0],
               [keras.saving.serialize_keras_object(keras_seglosses.CrossEntropy()), 0.5]]
    loss = registry.make_loss("compound", json.loads(json.dumps({"losses": members})))
    x, y = batches["plain"]
    pred = np.full(tuple(y.shape), 0.5, "float32")
    want = keras_seglosses.Dice()(y, pred) + 0.5 * keras_seglosses.CrossEntropy()(y, pred)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(y, pred)),
                               keras.ops.convert_to_numpy(want), rtol=1e-5)


def test_an_ignore_mask_is_refused_as_not_packed_by_the_pipeline():
    """`--loss-config '{"mask_index": ...}'`: the CM pipeline packs no ignore
    mask, so the message says so (not "compute the map")."""
    masked_member = [[keras.saving.serialize_keras_object(keras_seglosses.Dice(mask_index=1)),
                      1.0]]
    cases = (("dl", {"mask_index": 0}, 0), ("dl", {"mask_index": 1}, 1),
             ("rpdl", {"mask_index": 1}, 1), ("dice_ce", {"mask_index": 0}, 0),
             ("compound", {"losses": masked_member}, 1))
    for name, config, slot in cases:
        with pytest.raises(ValueError) as info:
            registry.loss_targets(registry.make_loss(name, config))
        message = str(info.value)
        assert "`loss_config`" in message and f"mask_index={slot}" in message, message
        assert "packs only the reward-penalty map (\"rpmap\") at slot 0" in message, message
        assert "packs no ignore mask" in message and "Drop `mask_index`" in message, message
        assert "map_index" not in message, message
