"""HD95, NSD, ASD (functional and Keras metrics) against MONAI, medpy and
DeepMind's surface-distance, every convention, on every backend, compiled."""

import math
import warnings

import keras
import numpy as np
import pytest
import torch
from _references import np_surface_metrics
from keras import ops
from medpy.metric import binary as medpy_binary
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
from scipy import ndimage

import surface_distance
import surface_distance.lookup_tables
from keras_seglosses import pack_targets
from keras_seglosses.metrics import ASD, HD95, NSD, functional
from keras_seglosses.metrics._surface_functional import (
    ASD_CONVENTIONS,
    HD95_CONVENTIONS,
    NSD_CONVENTIONS,
    surfel_area_table,
)

RTOL = 1e-4


def blobs(rng, shape, n):
    """Smooth random blobs; they reach the volume border on most samples."""
    out = []
    for _ in range(n):
        x = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        out.append(x > 0.3 * x.std())
    return np.stack(out)


def border_cases(rng, shape):
    """Pairs that lie on the volume border, where the tools' surface
    definitions matter most: the full volume (its surface is only the border
    layer), a half-space against a blob joined to the opposite face."""
    full = np.ones(shape, bool)
    half = np.zeros(shape, bool)
    half[: shape[0] // 2] = True
    blob = blobs(rng, shape, 1)[0]
    face = blob.copy()
    face[-1] = True
    return np.stack([full, half]), np.stack([blob, face])


def monai(gt, pr, spacing, tolerance, percentile):
    """MONAI's HD (symmetric and both directed), NSD, and symmetric ASD."""
    def t(m):
        return torch.tensor(m[None, None].astype("float32"))

    def hd(a, b, directed):
        metric = HausdorffDistanceMetric(include_background=True, percentile=percentile, directed=directed)
        return metric(t(a), t(b), spacing=spacing).item()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nsd = SurfaceDiceMetric([tolerance], include_background=True)(t(pr), t(gt), spacing=spacing)
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True)(t(pr), t(gt), spacing=spacing)
        asd_pg = SurfaceDistanceMetric(include_background=True)(t(pr), t(gt), spacing=spacing)
        # directed=True: from the surface of y_pred (first) to that of y.
        return {
            "hd": hd(pr, gt, False),
            "hd_gp": hd(gt, pr, True),
            "hd_pg": hd(pr, gt, True),
            "nsd": nsd.item(),
            "asd": asd.item(),
            "asd_pg": asd_pg.item(),
        }


def references(g, p, spacing, tol, q=95):
    """Every convention from the tool that defines it (keys as in `ours`)."""
    m = monai(g, p, spacing, tol, q)
    dm = surface_distance.compute_surface_distances(g, p, spacing)
    return m, {
        "hd max (MONAI)": m["hd"],
        "hd pooled (medpy)": medpy_binary.hd95(p, g, voxelspacing=spacing),
        "hd mean [003:13] (MONAI directed)": 0.5 * (m["hd_gp"] + m["hd_pg"]),
        "hd surfel (DeepMind)": surface_distance.compute_robust_hausdorff(dm, q),
        "nsd voxel (MONAI)": m["nsd"],
        "nsd surfel (DeepMind)": surface_distance.compute_surface_dice_at_tolerance(dm, tol),
        # medpy's asd(result, reference): mean distance from the surface of
        # `result` to that of `reference`.
        "asd mean [003:12] (medpy directed)": 0.5 * (
            medpy_binary.asd(g, p, voxelspacing=spacing) + medpy_binary.asd(p, g, voxelspacing=spacing)
        ),
        "asd pooled (medpy)": medpy_binary.assd(p, g, voxelspacing=spacing),
        "hd directed (MONAI)": m["hd_pg"],
        "asd directed (MONAI)": m["asd_pg"],
    }


def ours(y, p, spacing, tol):
    values = (
        [functional.hd95(y, p, spacing, convention=c) for c in ("max", "pooled", "mean", "surfel")]
        + [functional.nsd(y, p, tol, spacing, convention=c) for c in ("voxel", "surfel")]
        + [functional.asd(y, p, spacing, convention=c) for c in ("mean", "pooled")]
        + [functional.hd95(y, p, spacing, directed=True),
           functional.asd(y, p, spacing, directed=True)]
    )
    keys = [
        "hd max (MONAI)", "hd pooled (medpy)", "hd mean [003:13] (MONAI directed)",
        "hd surfel (DeepMind)", "nsd voxel (MONAI)", "nsd surfel (DeepMind)",
        "asd mean [003:12] (medpy directed)", "asd pooled (medpy)", "hd directed (MONAI)",
        "asd directed (MONAI)",
    ]
    return dict(zip(keys, values))


# (batch 2, *shape, 2 channels): channels fold into the batch, so every case
# computes on 4 volumes; the later tests reuse these shapes, which keeps the
# per-shape compilation of JAX's eager mode to three shapes. Sample 0 holds
# the border cases, sample 1 random blobs. One case also runs the two
# percentile selections and NSD's radius-limited transform compiled (XLA /
# jax.jit: the path of `fit`).
CASES = [
    ((14, 16, 12), (0.7, 1.3, 2.1), 1.5, True),
    ((16, 18, 20), (1.0, 1.0, 1.0), 1.0, False),
    ((20, 24), (0.6, 1.7), 1.2, False),
]


def case_masks(rng, shape):
    g_border, p_border = border_cases(rng, shape)
    gt = np.stack([g_border, blobs(rng, shape, 2)])
    pr = np.stack([p_border, blobs(rng, shape, 2)])
    return np.moveaxis(gt, 1, -1), np.moveaxis(pr, 1, -1)


@pytest.mark.backends
@pytest.mark.parametrize("shape,spacing,tol,compiled", CASES)
def test_conventions_match_monai_medpy_deepmind(jit, rng, shape, spacing, tol, compiled):
    gt, pr = case_masks(rng, shape)
    y, p = gt.astype("float32"), pr.astype("float32")
    got = {k: ops.convert_to_numpy(v) for k, v in ours(y, p, spacing, tol).items()}
    if compiled:
        fn = jit(lambda a, b: [
            functional.hd95(a, b, spacing, convention="pooled"),
            functional.hd95(a, b, spacing, convention="surfel"),
            functional.nsd(a, b, tol, spacing),
        ])
        for value, key in zip(fn(y, p), ("hd pooled (medpy)", "hd surfel (DeepMind)", "nsd voxel (MONAI)")):
            np.testing.assert_allclose(ops.convert_to_numpy(value), got[key], rtol=1e-6)
    for b in range(2):
        for c in range(2):
            g, q = gt[b, ..., c], pr[b, ..., c]
            m, want = references(g, q, spacing, tol)
            # The two community definitions of the pooled ASD agree.
            assert m["asd"] == pytest.approx(want["asd pooled (medpy)"], rel=RTOL)
            for key, ref in want.items():
                assert got[key][b, c] == pytest.approx(ref, rel=RTOL), (key, b, c)


@pytest.mark.backends
def test_other_percentiles_match_monai_medpy_deepmind(rng):
    shape, spacing = CASES[0][0], (1.0, 1.0, 1.0)
    gt, pr = case_masks(rng, shape)
    y, p = gt.astype("float32"), pr.astype("float32")
    g, q_mask = gt[1, ..., 0], pr[1, ..., 0]
    dm = surface_distance.compute_surface_distances(g, q_mask, spacing)
    pooled_set = np.concatenate(
        [medpy_binary.__surface_distances(g, q_mask, spacing), medpy_binary.__surface_distances(q_mask, g, spacing)]
    )
    for q in (0, 50, 99.5, 100):
        got = {
            c: ops.convert_to_numpy(functional.hd95(y, p, spacing, percentile=q, convention=c))[1, 0]
            for c in ("max", "pooled", "surfel")
        }
        if q:  # MONAI treats percentile=0 as "not given": the plain Hausdorff distance.
            assert got["max"] == pytest.approx(monai(g, q_mask, spacing, 1.0, q)["hd"], rel=RTOL)
        assert got["pooled"] == pytest.approx(np.percentile(pooled_set, q), rel=RTOL)
        assert got["surfel"] == pytest.approx(surface_distance.compute_robust_hausdorff(dm, q), rel=RTOL)


@pytest.mark.backends
def test_percentile_ties_follow_each_tool():
    # Two neighbouring voxels; with spacing (3, 4) every contour element is
    # 2.5 long (exact in float32), and half of each contour lies on the other:
    # directed distances [0, 0, 4, 4]. The 50th percentile is where the tools
    # part: numpy/MONAI interpolate (2.0); DeepMind takes the first distance
    # whose cumulative length reaches one half (0.0).
    shape, spacing = CASES[2][0], (3.0, 4.0)
    y = np.zeros((2,) + shape + (2,), "float32")
    p = np.zeros_like(y)
    y[:, 5, 5] = 1
    p[:, 5, 6] = 1
    g, q = y[0, ..., 0] > 0, p[0, ..., 0] > 0
    dm = surface_distance.compute_surface_distances(g, q, spacing)
    surfel = ops.convert_to_numpy(functional.hd95(y, p, spacing, 50, convention="surfel"))
    assert surface_distance.compute_robust_hausdorff(dm, 50) == 0.0
    np.testing.assert_array_equal(surfel, 0.0)
    voxel = ops.convert_to_numpy(functional.hd95(y, p, spacing, 50, convention="max"))
    np.testing.assert_allclose(voxel, monai(g, q, spacing, 1.0, 50)["hd"], rtol=RTOL)
    # Apart, so that no distance is 0: the extreme percentiles are the
    # smallest and largest distances.
    p[1] = 0
    p[1, 9, 8] = 1
    dm = surface_distance.compute_surface_distances(y[1, ..., 0] > 0, p[1, ..., 0] > 0, spacing)
    for q_ in (0, 100):
        surfel = ops.convert_to_numpy(functional.hd95(y, p, spacing, q_, convention="surfel"))[1, 0]
        assert surfel == pytest.approx(surface_distance.compute_robust_hausdorff(dm, q_), rel=RTOL), q_


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.1), (2.0, 0.5), (1.0, 1.0)])
def test_surfel_area_table_matches_deepmind(spacing):
    # Every one of the 256 (2D: 16) codes, mapped through DeepMind's own
    # neighbourhood encoding of the same 2x2x2 (2x2) block of voxels.
    nd = len(spacing)
    if nd == 3:
        theirs = surface_distance.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        kernel = surface_distance.lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    else:
        theirs = surface_distance.lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
        kernel = surface_distance.lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL
    ours_table = surfel_area_table(spacing)
    corners = list(np.ndindex(*(2,) * nd))  # bit k of our code: corner k in row-major order
    for code in range(2 ** (2**nd)):
        block = np.zeros((2,) * nd, np.uint8)
        for k, corner in enumerate(corners):
            block[corner] = (code >> k) & 1
        theirs_code = ndimage.correlate(block, kernel, mode="constant", cval=0)[(1,) * nd]
        assert ours_table[code] == pytest.approx(theirs[theirs_code], rel=1e-12, abs=1e-12), code


@pytest.mark.backends
def test_empty_masks():
    # Shape of CASES[0], 4 samples: both empty, only y, only p, both present.
    shape, spacing = CASES[0][0], (1.0, 2.0, 0.5)
    y = np.zeros((4,) + shape + (1,), "float32")
    p = np.zeros_like(y)
    y[1, 2:4, 2:4, 2:4] = 1  # only y non-empty
    p[2, 1:3, 1:5, 2:6] = 1  # only p non-empty
    y[3, 2:6, 2:6, 2:6] = 1
    p[3, 2:6, 3:7, 2:6] = 1
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    for c in HD95_CONVENTIONS:
        hd = ops.convert_to_numpy(functional.hd95(y, p, spacing, convention=c))[:, 0]
        np.testing.assert_allclose(hd[:3], [0.0, diag, diag], rtol=1e-6, err_msg=c)
        inf = ops.convert_to_numpy(functional.hd95(y, p, spacing, convention=c, empty_value=float("inf")))
        assert inf[0, 0] == 0 and np.isinf(inf[1:3, 0]).all() and np.isfinite(inf[3, 0]), c
    for c in ASD_CONVENTIONS:
        asd = ops.convert_to_numpy(functional.asd(y, p, spacing, convention=c, empty_value=3.0))[:, 0]
        np.testing.assert_allclose(asd[:3], [0.0, 3.0, 3.0], rtol=1e-6, err_msg=c)
    for c in NSD_CONVENTIONS:
        nsd = ops.convert_to_numpy(functional.nsd(y, p, 1.0, spacing, convention=c))[:, 0]
        np.testing.assert_allclose(nsd[:3], [1.0, 0.0, 0.0], err_msg=c)
    # Keras metrics: never NaN or inf; the default is the volume diagonal.
    both = ops.convert_to_numpy(functional.hd95(y, p, spacing))[3, 0]
    m = HD95(spacing=spacing)
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx((2 * diag + both) / 4, rel=1e-6)
    m = HD95(spacing=spacing, empty_value=5.0)
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx((10.0 + both) / 4, rel=1e-6)
    m = NSD(spacing=spacing)
    m.update_state(y[:3], p[:3])
    assert float(m.result()) == pytest.approx(1.0 / 3)


def test_packed_targets_read_labels_only(rng):
    shape = CASES[0][0]
    gt, pr = case_masks(rng, shape)
    y, p = gt.astype("float32"), pr.astype("float32")
    packed = pack_targets(y, rng.random(y.shape).astype("float32") * 5)  # a map after the labels
    for fn in (functional.hd95, functional.nsd, functional.asd):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(fn(packed, p)), ops.convert_to_numpy(fn(y, p)), err_msg=fn.__name__
        )


def test_bad_input_names_argument():
    y = np.zeros((1, 4, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="`spacing`"):
        functional.hd95(y, y, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="`spacing`"):
        NSD(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="`y_true` and `y_pred` must have the same rank"):
        functional.asd(y, y[..., 0, :])
    with pytest.raises(ValueError, match="`y_true` and `y_pred` differ"):
        functional.nsd(y, np.zeros((1, 4, 4, 5, 1), "float32"))
    with pytest.raises(ValueError, match="2D or 3D"):
        functional.hd95(y[..., None], y[..., None])
    with pytest.raises(ValueError, match=r"`spacing`.*3 positive.*Received: spacing=\[1.0, 1.0\]"):
        HD95(spacing=(1.0, 1.0)).update_state(y, y)  # length checked against the data
    with pytest.raises(ValueError, match="`convention`"):
        HD95(convention="median")
    with pytest.raises(ValueError, match="`empty_value`"):
        ASD(empty_value=float("inf"))
    with pytest.raises(ValueError, match="`percentile`"):
        functional.hd95(y, y, percentile=101)
    with pytest.raises(ValueError, match="`tolerance`"):
        NSD(tolerance=-1)


@pytest.mark.parametrize("cls,kwargs", [
    (HD95, dict(spacing=(1.0, 2.0, 1.5), percentile=90, convention="pooled", empty_value=7.0)),
    (NSD, dict(tolerance=2.0, spacing=(1.0, 2.0, 1.5), convention="surfel")),
    (ASD, dict(spacing=2.0, convention="pooled")),
    (HD95, dict(spacing=(1.0, 2.0, 1.5), directed=True)),
    (ASD, dict(spacing=2.0, directed=True)),
])
def test_config_round_trip(rng, cls, kwargs):
    metric = cls(**kwargs)
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is cls and restored.get_config() == metric.get_config()
    y = blobs(rng, (2, 8, 9, 7), 1)[0][..., None].astype("float32")
    p = np.roll(y, 1, axis=1)
    for m in (metric, restored):
        m.update_state(y, p)
    assert float(restored.result()) == pytest.approx(float(metric.result()), rel=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="unknown static shapes are TF's")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_unknown_batch_size_in_tf_graph(rng, jit_compile):
    # `fit` on TensorFlow traces with an unknown batch axis (a tf.data batch).
    import tensorflow as tf

    shape = CASES[2][0]
    gt, pr = case_masks(rng, shape)
    y, p = gt.astype("float32"), pr.astype("float32")
    spec = tf.TensorSpec((None,) + y.shape[1:], tf.float32)

    def all_metrics(a, b):
        return list(ours(a, b, (1.0, 2.0), 1.0).values())

    fn = tf.function(all_metrics, input_signature=[spec, spec], jit_compile=jit_compile)
    for got, want in zip(fn(y, p), all_metrics(y, p)):
        np.testing.assert_allclose(got.numpy(), ops.convert_to_numpy(want), rtol=1e-6)


@pytest.mark.backends
def test_fit_step_with_metrics(rng):
    x = rng.random((4, 8, 8, 8, 1)).astype("float32")
    y = (x > 0.5).astype("float32")
    inputs = keras.Input((8, 8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid")(inputs))
    model.compile(
        optimizer="sgd",
        loss="binary_crossentropy",
        metrics=[HD95(spacing=(1.0, 1.0, 2.0)), NSD(convention="surfel"), ASD()],
        jit_compile=keras.backend.backend() != "torch",
    )
    logs = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    for key in ("hd95", "nsd", "asd"):
        assert np.isfinite(logs[key][0])
    assert 0.0 <= logs["nsd"][0] <= 1.0


def test_empty_nan_leaves_every_empty_case_out_as_monai():
    shape, spacing = CASES[0][0], (1.0, 2.0, 0.5)
    y = np.zeros((4,) + shape + (1,), "float32")
    p = np.zeros_like(y)
    y[1, 2:4, 2:4, 2:4] = 1
    p[2, 1:3, 1:5, 2:6] = 1
    y[3, 2:6, 2:6, 2:6] = 1
    p[3, 2:6, 3:7, 2:6] = 1
    for fn in (functional.hd95, functional.asd, functional.nsd):
        values = ops.convert_to_numpy(fn(y, p, spacing=spacing, empty="nan"))[:, 0]
        assert np.isnan(values[:3]).all() and np.isfinite(values[3]), fn.__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = HausdorffDistanceMetric(include_background=True, percentile=95)(
            torch.tensor(np.moveaxis(p, -1, 1)), torch.tensor(np.moveaxis(y, -1, 1)),
            spacing=spacing).numpy()[:, 0]
    ours = ops.convert_to_numpy(functional.hd95(y, p, spacing, empty="nan"))[:, 0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)  # NaN where MONAI's is NaN
    for cls in (HD95, ASD, NSD):
        metric = cls(spacing=spacing, empty="nan")
        metric.update_state(y, p)
        alone = ops.convert_to_numpy(getattr(functional, cls.__name__.lower())(
            y[3:], p[3:], spacing=spacing))[0, 0]
        assert float(metric.result()) == pytest.approx(float(alone), rel=1e-6), cls.__name__
        assert float(metric.excluded) == 3.0
    with pytest.raises(ValueError, match="`empty`"):
        HD95(empty="ignore")


# ------------------------------------------------------------ ignore masks
# MONAI, medpy and DeepMind take no mask for these metrics: the references
# are scipy's (and DeepMind's for the surfel conventions) on the masks
# restricted to the counted voxels.
def masked_case(rng, shape):
    """`case_masks` with a per-channel ignore mask: a slab through the
    objects and scattered voxels."""
    gt, pr = case_masks(rng, shape)
    mask = rng.random(gt.shape) > 0.1
    mask[:, :, shape[1] // 3: shape[1] // 2] = False
    return gt, pr, mask


def masked_references(gt, pr, mask, spacing, tol):
    """Every convention per sample and channel, keys as `np_surface_metrics`
    plus `"hd surfel"` and `"nsd surfel"` (DeepMind's)."""
    out = {}
    for b in range(gt.shape[0]):
        for c in range(gt.shape[-1]):
            g, q = gt[b, ..., c] & mask[b, ..., c], pr[b, ..., c] & mask[b, ..., c]
            assert g.any() and q.any()
            want = np_surface_metrics(g, q, spacing, tol)
            dm = surface_distance.compute_surface_distances(g, q, spacing)
            want["hd surfel"] = surface_distance.compute_robust_hausdorff(dm, 95)
            want["nsd surfel"] = surface_distance.compute_surface_dice_at_tolerance(dm, tol)
            for key, value in want.items():
                out.setdefault(key, np.zeros(gt.shape[:1] + gt.shape[-1:]))[b, c] = value
    return out


def masked_ours(fn_hd, fn_nsd, fn_asd, y, p, spacing, tol):
    return {
        "hd max": fn_hd(y, p, spacing),
        "hd pooled": fn_hd(y, p, spacing, convention="pooled"),
        "hd mean": fn_hd(y, p, spacing, convention="mean"),
        "hd directed": fn_hd(y, p, spacing, directed=True),
        "hd surfel": fn_hd(y, p, spacing, convention="surfel"),
        "asd mean": fn_asd(y, p, spacing),
        "asd pooled": fn_asd(y, p, spacing, convention="pooled"),
        "asd directed": fn_asd(y, p, spacing, directed=True),
        "nsd voxel": fn_nsd(y, p, tol, spacing),
        "nsd surfel": fn_nsd(y, p, tol, spacing, convention="surfel"),
    }


def test_masked_conventions_match_scipy_and_deepmind_on_the_masked_masks(rng):
    shape, spacing, tol, _ = CASES[0]
    gt, pr, mask = masked_case(rng, shape)
    want = masked_references(gt, pr, mask, spacing, tol)
    packed = pack_targets(gt.astype("float32"), mask.astype("float32"))
    p = pr.astype("float32")

    def with_mask(fn):
        return lambda y, p, *args, **kwargs: fn(y, p, *args, mask_index=0, **kwargs)

    got = masked_ours(*(with_mask(f) for f in (functional.hd95, functional.nsd, functional.asd)),
                      packed, p, spacing, tol)
    for key, value in got.items():
        np.testing.assert_allclose(ops.convert_to_numpy(value), want[key], rtol=RTOL, err_msg=key)
    # The same options without the mask (another compiled function on the
    # eager path) score the whole masks.
    plain = ops.convert_to_numpy(functional.hd95(packed, p, spacing))
    g, q = gt[1, ..., 0], pr[1, ..., 0]
    assert plain[1, 0] == pytest.approx(np_surface_metrics(g, q, spacing, tol)["hd max"], rel=RTOL)
    assert not np.allclose(plain, want["hd max"])


@pytest.mark.backends
def test_masked_surface_metrics_compile_and_follow_the_empty_rules(rng, jit):
    shape, spacing, tol, _ = CASES[2]
    gt, pr, mask = masked_case(rng, shape)
    want = masked_references(gt, pr, mask, spacing, tol)
    y, p, w = gt.astype("float32"), pr.astype("float32"), mask.astype("float32")
    # slot 1: the rpmap slot 0 of a metric that reads one would take
    packed = pack_targets(y, np.zeros_like(y), w)
    fn = jit(lambda a, b: [functional.hd95(a, b, spacing, mask_index=1),
                           functional.nsd(a, b, tol, spacing, mask_index=1),
                           functional.asd(a, b, spacing, convention="pooled", mask_index=1)])
    for value, key in zip(fn(packed, p), ("hd max", "nsd voxel", "asd pooled")):
        np.testing.assert_allclose(ops.convert_to_numpy(value), want[key], rtol=RTOL, err_msg=key)
    # Ignored voxels' labels and predictions change nothing.
    flipped = np.where(mask, gt, ~gt).astype("float32")
    again = fn(pack_targets(flipped, np.zeros_like(y), w),
               np.where(mask, pr, ~pr).astype("float32"))
    for value, key in zip(again, ("hd max", "nsd voxel", "asd pooled")):
        np.testing.assert_allclose(ops.convert_to_numpy(value), want[key], rtol=RTOL, err_msg=key)
    # Empty rules on the counted voxels: sample 0 channel 0 with the
    # prediction only inside the ignored voxels (exactly one empty), sample
    # 1 channel 0 with both there (both empty).
    w[0, ..., 0] = np.where(pr[0, ..., 0] & ~gt[0, ..., 0], 0.0, 1.0)
    p[0, ..., 0] = (pr[0, ..., 0] & ~gt[0, ..., 0]).astype("float32")
    w[1, ..., 0] = 0.0
    packed = pack_targets(y, np.zeros_like(y), w)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    hd, nsd_, asd_ = (ops.convert_to_numpy(v) for v in fn(packed, p))
    assert hd[0, 0] == pytest.approx(diag) and asd_[0, 0] == pytest.approx(diag)
    assert nsd_[0, 0] == 0.0 and (hd[1, 0], nsd_[1, 0], asd_[1, 0]) == (0.0, 1.0, 0.0)
    np.testing.assert_allclose(hd[:, 1], want["hd max"][:, 1], rtol=RTOL)
    for cls, key in ((HD95, "hd max"), (NSD, "nsd voxel"), (ASD, "asd pooled")):
        kwargs = {"convention": "pooled"} if cls is ASD else {}
        if cls is NSD:
            kwargs["tolerance"] = tol
        metric = cls(spacing=spacing, mask_index=1, empty="nan", **kwargs)
        metric.update_state(packed, p)
        values = np.array(want[key])
        values[:, 0] = np.nan  # the two empty cases are left out
        assert float(metric.result()) == pytest.approx(np.nanmean(np.nanmean(values, -1)),
                                                       rel=RTOL), key
        assert float(metric.excluded) == 2.0


def test_masked_metric_config_and_map_reads():
    from keras_seglosses.targets import MapRead, map_reads

    for cls in (HD95, NSD, ASD):
        metric = cls(spacing=(1.0, 2.0, 1.5), mask_index=2)
        assert map_reads(metric) == (MapRead("mask", 2, 1),)
        restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert restored.mask_index == 2 and restored.get_config() == metric.get_config()
        assert cls().mask_index is None and map_reads(cls()) == ()
        with pytest.raises(ValueError, match="`mask_index`"):
            cls(mask_index=-1)
    y = np.zeros((1, 6, 6, 6, 1), "float32")
    with pytest.raises(ValueError, match="ignore mask.*pack_targets"):
        functional.hd95(y, y, mask_index=0)
    with pytest.raises(ValueError, match="`mask_index`"):
        functional.nsd(pack_targets(y, y), y, mask_index=1.5)
