"""models3d: the four 3D architectures of the RPDL paper (Keras 3, any backend).

`basic_unet` (the paper's U-net), `vnet`, `isensee2017` and `myronenko2018`
build functional `keras.Model`s (channels_last); `get(name, **kwargs)` picks
one by name; `load_original_weights` loads the RPDL original's Keras 2 HDF5
files. Import this package before `keras.models.load_model` so that Keras
finds its registered layers.
"""

from models3d.blocks import (
    apply_context_module,
    apply_conv_block,
    apply_localization_module,
    apply_up_sampling_module,
)
from models3d.isensee import isensee2017
from models3d.myronenko import (
    LinearUpSampling3D,
    VAELoss,
    VAESampling,
    apply_resnet_block,
    myronenko2018,
)
from models3d.unet import basic_unet
from models3d.vnet import vnet
from models3d.weights import load_original_weights

ARCHITECTURES = {
    "unet": basic_unet,
    "vnet": vnet,
    "isensee2017": isensee2017,
    "myronenko2018": myronenko2018,
}


def get(name, **kwargs):
    """Build an architecture by name.

    Args:
        name: one of `"unet"` (`basic_unet`), `"vnet"`, `"isensee2017"`,
            `"myronenko2018"`.
        **kwargs: passed to the builder.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = get("vnet", input_shape=(16, 16, 16, 1), depth=3)
    >>> model.name
    'vnet'
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            "Invalid value for argument `name`. Expected one of "
            f"{sorted(ARCHITECTURES)}. Received: name={name!r}"
        )
    return ARCHITECTURES[name](**kwargs)


__all__ = [
    "ARCHITECTURES",
    "get",
    "basic_unet",
    "vnet",
    "isensee2017",
    "myronenko2018",
    "load_original_weights",
    "LinearUpSampling3D",
    "VAESampling",
    "VAELoss",
    "apply_conv_block",
    "apply_context_module",
    "apply_up_sampling_module",
    "apply_localization_module",
    "apply_resnet_block",
]
