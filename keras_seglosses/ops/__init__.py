"""Native distance ops written with `keras.ops` only (SPEC.md section 3):
exact Euclidean distance transform, signed distance, surface extraction and
directed surface distances, batched and jit-able on every backend.

Library modules import from here by name (`from keras_seglosses.ops import
distance_transform`) because they also use `from keras import ops`.
"""

from keras_seglosses.ops.distance import (
    distance_transform,
    signed_distance,
    surface,
    surface_distances,
)

__all__ = ["distance_transform", "signed_distance", "surface", "surface_distances"]
