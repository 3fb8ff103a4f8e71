"""Surface metrics HD95, NSD and ASD: functional forms, per sample and
channel, in `keras.ops` (re-exported by `keras_seglosses.metrics.functional`).

Every tool computes these a little differently; each community convention is
selectable and reproduced exactly:

- voxel conventions (MONAI, medpy): the surface is the set of boundary voxels
  (`keras_seglosses.ops.surface`: mask minus its 6-connected erosion, voxels
  on the volume border included), each counting once.
- `"surfel"` conventions (DeepMind's surface-distance): the surface lives on
  the dual grid, one element per 2x2x2 (2D: 2x2) neighbourhood that is
  neither empty nor full, weighted by the area (2D: length) of the
  marching-cubes surface inside that neighbourhood. The volume is padded
  with background, so the surface closes along the volume border, as
  DeepMind's zero padding does.

Distances are between surface points of the two masks (voxel centres, or
the centres of the dual-grid neighbourhoods), in the units of `spacing`.

With an ignore mask (`mask_index`, the packed slot of a 0/1 map, 1 where a
voxel counts, binarized at 0.5) both the prediction and the ground truth are restricted to
the counted voxels first: the ignored voxels become background in both, and
the surfaces, distances and empty-mask rules are those of the restricted
masks. Every surface point then lies on a counted foreground voxel (a
boundary voxel, or a dual-grid element touching one), so none inside the
ignored voxels counts. Where the mask cuts through an object, both masks
get a surface along the cut, at distance 0 from each other when both hold
the object there. MONAI, medpy and DeepMind's surface-distance take no mask
for these metrics; masking both inputs before calling them is the same.

Percentiles are numpy's default "linear" interpolation over the sorted
distances at virtual index `(n - 1) * q / 100`, computed in integer
arithmetic so that large surfaces do not lose the fractional part in float32;
the order statistics are found exactly by counting
(`keras_seglosses.ops.order.search_bits`), not sorting.
NSD only needs to know which distances are within the tolerance, so its
distance transforms look no farther than that (`_squared_distance(radius=)`).
"""

import functools
import math
from fractions import Fraction

import numpy as np
from keras import ops

from keras_seglosses._core import check_choice, check_mask_slot, check_number
from keras_seglosses._jit import eager_compiled
from keras_seglosses.metrics._common import binarize, check_empty
from keras_seglosses.ops.distance import _squared_distance, _surface_bool, check_spacing
from keras_seglosses.ops.order import INF_BITS, search_bits

__all__ = ["hd95", "nsd", "asd", "surfel_area_table"]

HD95_CONVENTIONS = ("max", "pooled", "mean", "surfel")
NSD_CONVENTIONS = ("voxel", "surfel")
ASD_CONVENTIONS = ("mean", "pooled")


# ------------------------------------------------------------- area tables
def _corners(nd):
    """Corner offsets of the 2^nd neighbourhood; corner k is bit k of a code."""
    return [tuple((k >> (nd - 1 - a)) & 1 for a in range(nd)) for k in range(2**nd)]


@functools.lru_cache(maxsize=None)
def _unit_triangles():
    """Marching-cubes triangles (vertex coordinates in voxel units) of every
    2x2x2 code.

    DeepMind's table is symmetric under complement (the surface between
    inside and outside does not depend on which side is called inside) and,
    on ambiguous faces, separates the corners of the minority side: the
    classic Lorensen-Cline triangulation of the cube with the minority
    corners as foreground, which scikit-image's `method="lorensen"` gives.
    """
    from skimage import measure

    corners = _corners(3)
    out = []
    for code in range(256):
        ones = bin(code).count("1")
        if ones in (0, 8):
            out.append(np.zeros((0, 3, 3)))
            continue
        minority = code if ones <= 4 else 255 - code
        cube = np.zeros((2, 2, 2))
        for k, c in enumerate(corners):
            cube[c] = (minority >> k) & 1
        verts, faces, _, _ = measure.marching_cubes(cube, 0.5, method="lorensen")
        out.append(verts[faces].astype("float64"))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _area_table_cached(spacing):
    nd = len(spacing)
    s = np.asarray(spacing, "float64")
    if nd == 3:
        table = np.zeros(256)
        for code, tri in enumerate(_unit_triangles()):
            if len(tri):
                t = tri * s
                cross = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
                table[code] = 0.5 * np.linalg.norm(cross, axis=-1).sum()
        return table
    # 2D marching squares: the contour cuts off the minority corners. One
    # corner: a diagonal segment between two edge midpoints; two corners
    # sharing an edge: a segment parallel to that edge; two opposite corners
    # (a saddle): two diagonal segments, whichever way they are paired.
    diag = 0.5 * math.hypot(s[0], s[1])
    corners = _corners(2)
    table = np.zeros(16)
    for code in range(16):
        ones = [corners[k] for k in range(4) if (code >> k) & 1]
        if len(ones) in (1, 3):
            table[code] = diag
        elif len(ones) == 2:
            (a0, a1), (b0, b1) = ones
            if a0 == b0:  # same position on axis 0: the edge runs along axis 1
                table[code] = s[1]
            elif a1 == b1:
                table[code] = s[0]
            else:
                table[code] = 2 * diag
    return table


def surfel_area_table(spacing):
    """Area (3D) or contour length (2D) of the surface element of every
    neighbourhood code, for physical `spacing`.

    Code bit k is corner k of the 2x2x2 (2D: 2x2) neighbourhood, with corner
    offsets in row-major order (bit 0 = offset (0, 0, 0), bit 1 = (0, 0, 1),
    ...). Derived from marching cubes (scikit-image, imported on first use);
    equal to the table of DeepMind's surface-distance.

    Args:
        spacing: sequence of 2 or 3 positive numbers.

    Returns:
        float64 numpy array of shape `(16,)` or `(256,)`.
    """
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) not in (2, 3):
        raise ValueError(
            "Invalid value for argument `spacing`. Expected 2 or 3 positive "
            f"numbers. Received: spacing={spacing!r}"
        )
    check_spacing(spacing, len(spacing))
    return _area_table_cached(spacing).copy()


# ----------------------------------------------------------------- helpers
def _fold(y_true, y_pred, threshold, name, mask_index=None):
    """Binarize, restrict both masks to the counted voxels (see the module
    docstring), and move channels into the batch: `(B * C, *spatial)`
    bools."""
    _, labels, pred = binarize(y_true, y_pred, threshold, name, check_mask_slot(mask_index))
    nd = len(pred.shape) - 2
    if nd not in (2, 3):
        raise ValueError(
            f"`{name}` expects 2D or 3D channels_last inputs of shape "
            f"(batch, *spatial, channels). Received: y_pred.shape={tuple(pred.shape)}"
        )
    spatial = tuple(int(s) for s in pred.shape[1:-1])

    def fold(x):
        return ops.reshape(ops.moveaxis(x, -1, 1), (-1,) + spatial) > 0.5

    return fold(labels), fold(pred), int(pred.shape[-1]), spatial


def _flat(x):
    # A static voxel count: `ops.view` (TensorFlow) needs the last axis known
    # when `fit` traces with an unknown batch size.
    return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))


def _codes(fg):
    """Neighbourhood codes on the dual grid: `(N, *(n + 1))` int32, the
    volume padded with background on every side."""
    nd = len(fg.shape) - 1
    spatial = fg.shape[1:]
    padded = ops.pad(ops.cast(fg, "int32"), [(0, 0)] + [(1, 1)] * nd)
    code = None
    for k, offset in enumerate(_corners(nd)):
        index = (slice(None),) + tuple(slice(o, o + s + 1) for o, s in zip(offset, spatial))
        term = padded[index] * (2**k)
        code = term if code is None else code + term
    return code


def _directed_sets(gt, pr, spacing, surfel=False, radius=None):
    """Both directed distance sets, stacked: `(values, weights)` of shape
    `(2N, V)`, rows `:N` from the ground-truth surface to the predicted one,
    rows `N:` back.

    Voxel conventions: the surface is the boundary voxels, each of weight 1.
    `surfel=True` (DeepMind): the surface elements of the dual grid, weighted
    by their area. Weights are 0 off the source surface. With `radius`,
    values are exact up to `radius` only (see `_squared_distance`).

    One stacked set rather than two keeps every later pass (the percentile
    selection above all) a single fused loop: XLA runs two separate
    selections about three times slower than one over twice the rows.
    """
    if surfel:
        nd = len(spacing)
        table = ops.convert_to_tensor(surfel_area_table(spacing).astype("float32"))

        def surface(fg):
            codes = _codes(fg)
            surf = ops.logical_and(codes != 0, codes != 2 ** (2**nd) - 1)
            return surf, ops.where(surf, ops.take(table, codes), 0.0)

    else:

        def surface(fg):
            surf = _surface_bool(fg)
            return surf, ops.cast(surf, "float32")

    # Each surface on its own, then stacked both ways round: XLA fuses this
    # form into a loop twice as fast as slicing one stacked surface.
    (s_g, w_g), (s_p, w_p) = surface(gt), surface(pr)
    values = ops.sqrt(_squared_distance(ops.concatenate([s_p, s_g], 0), spacing, radius))
    return _flat(values), _flat(ops.concatenate([w_g, w_p], 0))


def _halves(x):
    """`(x[:N], x[N:])` of a stacked `(2N, ...)` tensor."""
    n = ops.shape(x)[0] // 2
    return x[:n], x[n:]


def _as_bits(values, mask):
    # Distances are >= 0 (never -0.0: they come from `sqrt`); +inf off the mask.
    return ops.view(ops.where(mask, values, float("inf")), "int32")


def _from_bits(bits):
    # Through a static last axis: TensorFlow's `view` cannot take a vector of
    # unknown length (the batch axis, when `fit` traces).
    return ops.view(bits[:, None], "float32")[:, 0]


def _percentile(values, weights, q):
    """numpy's linear-interpolation percentile of `values` where
    `weights > 0`, per row; `+inf` for an empty row."""
    mask = weights > 0
    bits = _as_bits(values, mask)
    a = ops.maximum(ops.sum(ops.cast(mask, "int32"), axis=-1) - 1, 0)
    # Virtual index a * q / 100 = lo + rem / den, exactly, in int32.
    frac_q = Fraction(q / 100.0).limit_denominator(10000)
    num, den = frac_q.numerator, frac_q.denominator
    lo = (a // den) * num + ((a % den) * num) // den
    rem = ((a % den) * num) % den

    def count(x):
        return ops.sum(ops.cast(x, "int32"), axis=-1)

    # The lo-th smallest (0-based): the largest t with at most lo values < t.
    def at_most_lo_below(cuts, _):
        return [count(bits < t[:, None]) <= lo for t in cuts]

    lo_bits, _ = search_bits(at_most_lo_below, ops.shape(bits)[:1])
    # The next one: the same value when it repeats, else the smallest above.
    repeats = count(bits <= lo_bits[:, None]) > lo + 1
    above = ops.min(ops.where(bits > lo_bits[:, None], bits, INF_BITS), axis=-1)
    v_lo = _from_bits(lo_bits)
    v_hi = _from_bits(ops.where(repeats, lo_bits, above))
    t = ops.cast(rem, "float32") / float(den)
    return ops.where(t > 0, v_lo + t * (v_hi - v_lo), v_lo)


def _weighted_percentile(values, weights, q):
    """DeepMind's area-weighted percentile: the smallest distance whose
    cumulative area fraction (distances ascending) reaches `q / 100`; the
    largest distance when rounding leaves every fraction below it."""
    mask = weights > 0
    bits = _as_bits(values, mask)
    w = ops.where(mask, weights, 0.0)
    total = ops.sum(w, axis=-1)
    total = ops.where(total > 0, total, 1.0)

    # Smallest e with area(<= e) / total >= q: the largest t with
    # area(< t) / total < q, clipped to the values present (for q = 0, 100).
    def below(cuts, _):
        return [ops.sum(ops.where(bits < t[:, None], w, 0.0), axis=-1) / total < q / 100.0
                for t in cuts]

    found, _ = search_bits(below, ops.shape(bits)[:1])
    smallest = ops.min(bits, axis=-1)
    largest = ops.max(ops.where(mask, bits, 0), axis=-1)
    largest = ops.where(ops.any(mask, axis=-1), largest, INF_BITS)
    return _from_bits(ops.minimum(ops.maximum(found, smallest), largest))


def _masked_sum(values, weights):
    return ops.sum(ops.where(weights > 0, values * weights, 0.0), axis=-1)


def _diagonal(spatial, spacing):
    return float(np.linalg.norm(np.asarray(spatial, "float64") * np.asarray(spacing)))


def check_empty_value(empty_value, finite=False):
    """`None` (the volume diagonal) or a number >= 0 as a float; `inf` only
    when not `finite` (a Keras metric never averages inf)."""
    if empty_value is None:
        return None
    value = float(check_number("empty_value", empty_value, low=0))
    if finite and not math.isfinite(value):
        raise ValueError(
            "Invalid value for argument `empty_value`. Expected a finite number "
            f">= 0 or None (a Keras metric never averages inf). Received: "
            f"empty_value={empty_value!r}"
        )
    return value


def _finish(value, gt, pr, channels, perfect, empty_value, empty="score"):
    """Apply the empty-mask rules (SPEC.md section 5), or NaN for any empty
    mask with `empty="nan"`, and unfold to `(B, C)`."""
    if empty == "nan":
        perfect = empty_value = float("nan")
    # one axis: Keras < 3.15 reduces several axes one at a time on torch and
    # loses track of them
    has_g = ops.any(_flat(gt), axis=-1)
    has_p = ops.any(_flat(pr), axis=-1)
    value = ops.where(ops.logical_and(has_g, has_p), value, empty_value)
    value = ops.where(ops.logical_or(has_g, has_p), value, perfect)
    return ops.reshape(ops.cast(value, "float32"), (-1, channels))


# --------------------------------------------------------------- metrics
@eager_compiled
def hd95(
    y_true,
    y_pred,
    spacing=None,
    percentile=95,
    convention="max",
    threshold=0.5,
    empty_value=None,
    directed=False,
    empty="score",
    mask_index=None,
):
    """Robust (percentile) Hausdorff distance per sample and channel.

    With `d(a, B)` the distance from a surface point `a` to the nearest
    surface point of `B`, `G` the ground-truth and `P` the predicted
    surface, and `K^q` the q-th percentile:

    - `"max"`: `max(K^q_{a in G} d(a, P), K^q_{a in P} d(a, G))` over
      boundary voxels (MONAI's `HausdorffDistanceMetric`).
    - `"pooled"`: `K^q` of both directed sets together (medpy's `hd95`).
    - `"mean"`: the mean of the two directed percentiles [003, Eq. 13].
    - `"surfel"`: the max of the two directed percentiles, each weighted by
      surface-element area on the dual grid (DeepMind's
      `compute_robust_hausdorff`).

    Percentiles interpolate linearly as `numpy.percentile`, except
    `"surfel"`, which takes the smallest distance whose cumulative area
    fraction reaches `q / 100`. Both masks empty: 0. Exactly one empty:
    `empty_value`. `directed=True` keeps one direction only, from the
    predicted surface to the ground truth, `K^q_{a in P} d(a, G)` (MONAI's
    `directed=True`; `"surfel"` weights it by area, the other conventions
    agree on one direction).

    Args:
        y_true: labels `(batch, *spatial, C)`, possibly packed with maps.
        y_pred: predictions of the same shape, binarized at `threshold`.
        spacing: physical voxel size, a number or one per spatial axis.
            Defaults to `None` (1 along every axis).
        percentile: number in [0, 100]. Defaults to `95`.
        convention: `"max"`, `"pooled"`, `"mean"` or `"surfel"`. Defaults to
            `"max"`.
        threshold: binarization threshold of `y_pred`. Defaults to `0.5`.
        empty_value: value when exactly one mask is empty: a number >= 0,
            `float("inf")`, or `None` for the physical diagonal of the volume
            (norm of shape x spacing). Defaults to `None`.
        directed: bool, prediction to ground truth only. Defaults to `False`.
        empty: `"score"` (the rules above) or `"nan"`: NaN wherever either
            mask is empty (as MONAI, to be left out of means). Defaults to
            `"score"`.
        mask_index: int >= 0, the packed slot of an ignore mask, or `None`.
            Both masks are restricted to the counted voxels before their
            surfaces are taken (see the module docstring; MONAI has no
            mask here). Defaults to `None`.

    Returns:
        float32 tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 8, 8, 1)); y[0, 2:6, 2:6] = 1
    >>> p = np.zeros((1, 8, 8, 1)); p[0, 2:6, 3:7] = 1
    >>> np.asarray(hd95(y, p)).round(4).tolist()
    [[1.0]]

    Reference:
        Chen et al., TPAMI 2023 [003, Eq. 13]; Ma et al. 2021 [004, 3.3].
    """
    check_choice("convention", convention, HD95_CONVENTIONS)
    check_number("percentile", percentile, low=0, high=100)
    check_empty(empty)
    empty_value = check_empty_value(empty_value)
    gt, pr, channels, spatial = _fold(y_true, y_pred, threshold, "hd95", mask_index)
    spacing = check_spacing(spacing, len(spatial))
    q = float(percentile)
    values, weights = _directed_sets(gt, pr, spacing, surfel=convention == "surfel")
    if directed:
        select = _weighted_percentile if convention == "surfel" else _percentile
        value = _halves(select(values, weights, q))[1]
    elif convention == "pooled":
        v_g, v_p = _halves(values)
        w_g, w_p = _halves(weights)
        value = _percentile(ops.concatenate([v_g, v_p], -1), ops.concatenate([w_g, w_p], -1), q)
    else:
        select = _weighted_percentile if convention == "surfel" else _percentile
        a, b = _halves(select(values, weights, q))
        value = 0.5 * (a + b) if convention == "mean" else ops.maximum(a, b)
    if empty_value is None:
        empty_value = _diagonal(spatial, spacing)
    return _finish(value, gt, pr, channels, 0.0, empty_value, empty)


@eager_compiled
def nsd(y_true, y_pred, tolerance=1.0, spacing=None, convention="voxel", threshold=0.5,
        empty="score", mask_index=None):
    """Normalized surface Dice at `tolerance` per sample and channel.

    `NSD = (|dG ∩ B_dP(tau)| + |dP ∩ B_dG(tau)|) / (|dG| + |dP|)`
    [004, 3.3.2]: the share of both surfaces lying within `tolerance` of the
    other surface.

    - `"voxel"`: `|.|` counts boundary voxels (MONAI's `SurfaceDiceMetric`).
    - `"surfel"`: `|.|` sums surface-element areas on the dual grid
      (DeepMind's `compute_surface_dice_at_tolerance`).

    A distance equal to `tolerance` counts as within (decided on float32
    distances, as MONAI decides on float64 ones: a tie that the two
    roundings split can differ). Both masks empty: 1; exactly one empty: 0.

    Args:
        y_true: labels `(batch, *spatial, C)`, possibly packed with maps.
        y_pred: predictions of the same shape, binarized at `threshold`.
        tolerance: number >= 0, in the units of `spacing`. Defaults to `1.0`.
        spacing: a number or one per spatial axis. Defaults to `None`.
        convention: `"voxel"` or `"surfel"`. Defaults to `"voxel"`.
        threshold: binarization threshold of `y_pred`. Defaults to `0.5`.
        empty: `"score"` or `"nan"`, as in `hd95`. Defaults to `"score"`.
        mask_index: int >= 0 or `None`, an ignore mask as in `hd95`.
            Defaults to `None`.

    Returns:
        float32 tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 8, 8, 1)); y[0, 2:6, 2:6] = 1
    >>> np.asarray(nsd(y, y)).tolist()
    [[1.0]]

    Reference:
        Ma et al., "Loss odyssey" [004, 3.3.2]; Nikolov et al. 2018.
    """
    check_choice("convention", convention, NSD_CONVENTIONS)
    check_number("tolerance", tolerance, low=0)
    check_empty(empty)
    gt, pr, channels, spatial = _fold(y_true, y_pred, threshold, "nsd", mask_index)
    spacing = check_spacing(spacing, len(spatial))
    tol = float(tolerance)
    # Only "within tol or not" matters: distances beyond tol need not be exact.
    values, weights = _directed_sets(gt, pr, spacing, convention == "surfel", radius=tol)
    inside = _halves(_masked_sum(ops.cast(values <= tol, "float32"), weights))
    total = _halves(ops.sum(weights, axis=-1))
    total = total[0] + total[1]
    value = (inside[0] + inside[1]) / ops.where(total > 0, total, 1.0)
    return _finish(value, gt, pr, channels, 1.0, 0.0, empty)


@eager_compiled
def asd(y_true, y_pred, spacing=None, convention="mean", threshold=0.5, empty_value=None,
        directed=False, empty="score", mask_index=None):
    """Average (symmetric) surface distance per sample and channel.

    - `"mean"`: `(mean_{a in G} d(a, P) + mean_{a in P} d(a, G)) / 2`
      [003, Eq. 12].
    - `"pooled"`: the mean of both directed sets together (medpy 0.5's
      `assd`, MONAI's `SurfaceDistanceMetric(symmetric=True)`).

    - `directed=True`: `mean_{a in P} d(a, G)`, from the predicted surface
      to the ground truth only (MONAI's `SurfaceDistanceMetric` default,
      `symmetric=False`).

    Surfaces are boundary voxels. Both masks empty: 0; exactly one empty:
    `empty_value`.

    Args:
        y_true: labels `(batch, *spatial, C)`, possibly packed with maps.
        y_pred: predictions of the same shape, binarized at `threshold`.
        spacing: a number or one per spatial axis. Defaults to `None`.
        convention: `"mean"` or `"pooled"`. Defaults to `"mean"`.
        threshold: binarization threshold of `y_pred`. Defaults to `0.5`.
        empty_value: as in `hd95`. Defaults to `None` (volume diagonal).
        directed: bool, prediction to ground truth only. Defaults to `False`.
        empty: `"score"` or `"nan"`, as in `hd95`. Defaults to `"score"`.
        mask_index: int >= 0 or `None`, an ignore mask as in `hd95`.
            Defaults to `None`.

    Returns:
        float32 tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 8, 8, 1)); y[0, 2:6, 2:6] = 1
    >>> float(np.asarray(asd(y, y))[0, 0])
    0.0

    Reference:
        Chen et al., TPAMI 2023 [003, Eq. 12].
    """
    check_choice("convention", convention, ASD_CONVENTIONS)
    check_empty(empty)
    empty_value = check_empty_value(empty_value)
    gt, pr, channels, spatial = _fold(y_true, y_pred, threshold, "asd", mask_index)
    spacing = check_spacing(spacing, len(spatial))
    values, weights = _directed_sets(gt, pr, spacing)
    s_g, s_p = _halves(_masked_sum(values, weights))
    n_g, n_p = _halves(ops.sum(weights, axis=-1))
    if directed:
        value = s_p / ops.where(n_p > 0, n_p, 1.0)
    elif convention == "pooled":
        total = n_g + n_p
        value = (s_g + s_p) / ops.where(total > 0, total, 1.0)
    else:
        value = 0.5 * (
            s_g / ops.where(n_g > 0, n_g, 1.0) + s_p / ops.where(n_p > 0, n_p, 1.0)
        )
    if empty_value is None:
        empty_value = _diagonal(spatial, spacing)
    return _finish(value, gt, pr, channels, 0.0, empty_value, empty)
