"""keras-seglosses: segmentation losses and metrics for Keras 3.

Import this package before `keras.models.load_model` so that Keras finds the
registered classes.
"""

from keras_seglosses import callbacks, losses, metrics, multirater
from keras_seglosses import ops as ops  # noqa: PLC0414  (the subpackage, not keras.ops)
from keras_seglosses import reference
from keras_seglosses.losses import *  # noqa: F401,F403  (losses at top level)
from keras_seglosses.losses import __all__ as _loss_names
from keras_seglosses.maps import ac_map, boundary_map, rrw_map
from keras_seglosses.rpmap import (
    ORIGINAL_POS_WEIGHT,
    legacy_reward_penalty_targets,
    pos_weight_from_labels,
    reward_penalty_map,
    reward_penalty_map_tensor,
)
from keras_seglosses.targets import (
    MapRead,
    TargetLayout,
    map_reads,
    pack_targets,
    unpack_targets,
)

__version__ = "0.2.0"

__all__ = [
    "callbacks",
    "losses",
    "metrics",
    "multirater",
    "ops",
    "reference",
    "pack_targets",
    "unpack_targets",
    "TargetLayout",
    "MapRead",
    "map_reads",
    "reward_penalty_map",
    "reward_penalty_map_tensor",
    "legacy_reward_penalty_targets",
    "pos_weight_from_labels",
    "ORIGINAL_POS_WEIGHT",
    "rrw_map",
    "boundary_map",
    "ac_map",
    *_loss_names,
]
