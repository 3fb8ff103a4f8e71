"""Segmentation losses. Every class is also importable from `keras_seglosses`."""

from keras_seglosses.losses.rpdl import (
    Dice,
    LegacyRewardPenaltyDice,
    RewardPenaltyDice,
    WeightedBinaryCrossentropy,
    dice,
    legacy_reward_penalty_dice,
    reward_penalty_dice,
    weighted_binary_crossentropy,
)

__all__ = [
    "WeightedBinaryCrossentropy",
    "Dice",
    "RewardPenaltyDice",
    "LegacyRewardPenaltyDice",
    "weighted_binary_crossentropy",
    "dice",
    "reward_penalty_dice",
    "legacy_reward_penalty_dice",
]
