"""Names the command line accepts: losses, architectures, experiments, folds.

The loss table is built from the classes `keras_seglosses.losses` exports, so
a loss added to the library is trainable from `cmseg train` without touching
this file; the targets a loss needs come from what it declares it reads
(`label_kind`, `map_reads`), not from a table here. Every class is reachable
by its snake_case name (`RewardPenaltyDice` -> `reward_penalty_dice`); the
paper's short names are aliases [000, Sec. V]:
`wcel` (weighted cross entropy, Eq. 1), `dl` (Dice loss, Eq. 2) and `rpdl`
(reward-penalty Dice loss, Eq. 3).
"""

import inspect
import re

import keras

from keras_seglosses import losses as _losses
from keras_seglosses.targets import TargetLayout, map_reads

__all__ = [
    "MODELS",
    "EXPERIMENTS",
    "EXPERIMENT_NUMBERS",
    "FOLDER_EXPERIMENTS",
    "PAPER_LOSSES",
    "loss_names",
    "loss_class",
    "loss_targets",
    "make_loss",
    "takes_pos_weight",
    "snake_case",
    "valid_folds",
]

#: `models3d.get` names of the paper's four architectures [000, Sec. V].
MODELS = ("unet", "vnet", "isensee2017", "myronenko2018")

#: Experiment 1 leaves one bone out, Experiment 2 one surgeon [000, Sec. V].
EXPERIMENTS = ("bone", "surgeon")
#: The experiments of a folder of cases (`cm_dataset.splits.folder_split`).
FOLDER_EXPERIMENTS = ("case", "rater")
#: The experiment numbers `cm_dataset` uses.
EXPERIMENT_NUMBERS = {"bone": 1, "surgeon": 2}

#: The paper's short loss names and the classes they stand for.
PAPER_LOSSES = {
    "wcel": "WeightedBinaryCrossentropy",
    "dl": "Dice",
    "rpdl": "RewardPenaltyDice",
}

def snake_case(name):
    """`RewardPenaltyDice` -> `reward_penalty_dice`, `HD95Loss` -> `hd95_loss`."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _classes():
    found = {}
    for attr in getattr(_losses, "__all__", dir(_losses)):
        obj = getattr(_losses, attr, None)
        if inspect.isclass(obj) and issubclass(obj, keras.losses.Loss):
            found[snake_case(attr)] = obj
    return found


def loss_names():
    """Every name `--loss` accepts: the paper's aliases first, then the
    snake_case name of every loss class, sorted."""
    return tuple(PAPER_LOSSES) + tuple(sorted(_classes()))


def loss_class(name):
    """The `keras.losses.Loss` subclass behind a `--loss` name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    classes = _classes()
    key = snake_case(PAPER_LOSSES[name]) if name in PAPER_LOSSES else name
    if key not in classes:
        raise ValueError(
            f"Invalid value for argument `loss`. Expected one of "
            f"{', '.join(loss_names())}. Received: loss={name!r}"
        )
    return classes[key]


def takes_pos_weight(name):
    """Whether the loss behind `name` takes the class weight `pos_weight`
    (then `cmseg train` passes the fold's background to foreground ratio
    [000, Eq. 1], unless `--loss-config` sets it)."""
    return "pos_weight" in inspect.signature(loss_class(name)).parameters


def loss_targets(loss):
    """What `cm_dataset.make_dataset(targets=...)` must pack for a loss
    instance, from what it declares: `"legacy"` (the original's encoded
    target in place of the labels), `"rpdl"` (labels, then the RPMap at map
    slot 0) or `"plain"` (labels only: the loss reads no packed map).

    Raises:
        ValueError: for a loss that reads maps the pipeline cannot pack (an
            ignore mask among them: the pipeline makes none).
    """
    masks = sorted({read.index for read in map_reads(loss) if read.kind == "mask"})
    if masks:
        # before the layout: a mask after an empty slot would be reported as
        # a gap, and no `map_index` change can help where no mask exists
        received = ", ".join(f"mask_index={slot}" for slot in masks)
        raise ValueError(
            f"Invalid value for argument `loss_config` of loss {type(loss).__name__}: "
            "it reads an ignore mask, and the CM pipeline packs no ignore mask: it packs "
            "only the reward-penalty map (\"rpmap\") at slot 0. Drop `mask_index` from "
            "`--loss-config` (and from each member's config, for a compound). "
            f"Received: {received}"
        )
    if getattr(loss, "label_kind", "labels") == "legacy":
        if map_reads(loss):
            raise ValueError(
                f"`{type(loss).__name__}` reads the released code's encoded target "
                "and packed maps; the pipeline packs one or the other."
            )
        return "legacy"
    layout = TargetLayout.for_reader(loss)
    if layout == TargetLayout(()):
        return "plain"
    if layout == TargetLayout(("rpmap",)):
        return "rpdl"
    raise ValueError(
        f"Invalid value for argument `loss_config` of loss {type(loss).__name__}: it "
        f"reads the packed maps {layout!r}, and the CM pipeline packs only the "
        "reward-penalty map (\"rpmap\") at slot 0. Let losses that can compute "
        "their maps do so (`map_index` null)."
    )


def make_loss(name, loss_config=None, *, pos_weight=None):
    """Instantiate the loss behind `name` with the constructor arguments
    `loss_config` (a dict, from `--loss-config`).

    A loss that takes `pos_weight` (`wcel`, `weighted_binary_crossentropy`)
    gets the paper's class weight, the background to foreground ratio of the
    training labels [000, Eq. 1], when `pos_weight` is given and
    `loss_config` does not set it.
    """
    cls = loss_class(name)
    kwargs = dict(loss_config or {})
    if pos_weight is not None and takes_pos_weight(name) and "pos_weight" not in kwargs:
        kwargs["pos_weight"] = float(pos_weight)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"Invalid value for argument `loss_config` of loss {name!r}: {e}. "
            f"Accepted arguments: {', '.join(_init_args(cls))}."
        ) from None


def _init_args(cls):
    params = inspect.signature(cls).parameters
    return [p for p in params if p not in ("args", "kwargs")]


def valid_folds(experiment, n_bones=9, n_surgeons=7):
    """Folds of an experiment: 1..n_bones (`bone`) or 1..n_surgeons
    (`surgeon`)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(
            f"Invalid value for argument `experiment`. Expected one of "
            f"{', '.join(EXPERIMENTS)}. Received: experiment={experiment!r}"
        )
    n = n_bones if experiment == "bone" else n_surgeons
    return tuple(range(1, n + 1))
