"""`scripts.registry`: loss names from the library, aliases, targets."""

import keras
import pytest

import keras_seglosses
from scripts import registry


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
    assert registry.loss_targets("rpdl") == "rpdl"
    assert registry.loss_targets("legacy_reward_penalty_dice") == "legacy"
    assert registry.loss_targets("dl") == "plain"
    assert registry.loss_targets("wcel") == "plain"


def test_make_loss():
    loss = registry.make_loss("wcel", pos_weight=24.0)
    assert loss.get_config()["pos_weight"] == 24.0
    assert registry.make_loss("dl", smooth=1e-5).get_config()["smooth"] == 1e-5
    with pytest.raises(ValueError, match="Accepted arguments: .*smooth"):
        registry.make_loss("dl", smoothing=1.0)
    with pytest.raises(ValueError, match="Expected one of wcel, dl, rpdl"):
        registry.loss_class("focal_dice_xyz")


def test_valid_folds():
    assert registry.valid_folds("bone") == tuple(range(1, 10))
    assert registry.valid_folds("surgeon") == tuple(range(1, 8))
    assert registry.valid_folds("bone", n_bones=3, n_surgeons=2) == (1, 2, 3)
    with pytest.raises(ValueError, match="bone, surgeon"):
        registry.valid_folds("patient")
