"""HD95, NSD, ASD (functional and Keras metrics) against MONAI, medpy and
DeepMind's surface-distance, every convention, on every backend, compiled."""

import math
import warnings

import keras
import numpy as np
import pytest
import torch
from keras import ops
from medpy.metric import binary as medpy_binary
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
from scipy import ndimage

import surface_distance
from keras_seglosses.metrics import ASD, HD95, NSD, functional

RTOL = 1e-4


def blobs(rng, shape, n):
    """Smooth random blobs; they reach the volume border on most samples."""
    out = []
    for _ in range(n):
        x = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        out.append(x > 0.3 * x.std())
    return np.stack(out)


def monai_values(gt, pr, spacing, tolerance, percentile):
    t = lambda m: torch.tensor(m[None, None].astype("float32"))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(percentile=percentile)(t(pr), t(gt), spacing=spacing)
        nsd = SurfaceDiceMetric([tolerance])(t(pr), t(gt), spacing=spacing)
        asd = SurfaceDistanceMetric(symmetric=True)(t(pr), t(gt), spacing=spacing)
    return hd.item(), nsd.item(), asd.item()


def medpy_directed(gt, pr, spacing):
    """(gt -> pred, pred -> gt) boundary-voxel distances as medpy defines them."""
    def border(m):
        return m ^ ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1))

    def directed(a, b):
        return ndimage.distance_transform_edt(~border(b), sampling=spacing)[border(a)]

    return directed(gt, pr), directed(pr, gt)


# One case also runs the two percentile paths compiled (XLA / jax.jit: the
# path of `fit`); compiling all eight metrics costs ~25 s on 2 cores.
CASES = [
    ((14, 16, 12), (0.7, 1.3, 2.1), 1.5, True),
    ((16, 18, 20), (1.0, 1.0, 1.0), 1.0, False),
    ((20, 24), (0.6, 1.7), 1.2, False),
]


@pytest.mark.backends
@pytest.mark.parametrize("shape,spacing,tol,compiled", CASES)
def test_conventions_match_monai_medpy_deepmind(jit, rng, shape, spacing, tol, compiled):
    # (batch 2, *shape, 2 channels): channels fold into the batch.
    gt = np.moveaxis(blobs(rng, shape, 4).reshape((2, 2) + shape), 1, -1)
    pr = np.moveaxis(blobs(rng, shape, 4).reshape((2, 2) + shape), 1, -1)

    def all_metrics(y, p):
        return (
            [functional.hd95(y, p, spacing, convention=c) for c in ("max", "pooled", "mean", "surfel")]
            + [functional.nsd(y, p, tol, spacing, convention=c) for c in ("voxel", "surfel")]
            + [functional.asd(y, p, spacing, convention=c) for c in ("mean", "pooled")]
        )

    got = [ops.convert_to_numpy(v) for v in all_metrics(gt.astype("float32"), pr.astype("float32"))]
    if compiled:
        fn = jit(lambda y, p: [functional.hd95(y, p, spacing, convention=c) for c in ("pooled", "surfel")])
        for value, want in zip(fn(gt.astype("float32"), pr.astype("float32")), (got[1], got[3])):
            np.testing.assert_allclose(ops.convert_to_numpy(value), want, rtol=1e-6)
    hd_max, hd_pooled, hd_mean, hd_surfel, nsd_voxel, nsd_surfel, asd_mean, asd_pooled = got
    for b in range(2):
        for c in range(2):
            g, p = gt[b, ..., c], pr[b, ..., c]
            m_hd, m_nsd, m_asd = monai_values(g, p, spacing, tol, 95)
            d_gp, d_pg = medpy_directed(g, p, spacing)
            dm = surface_distance.compute_surface_distances(g, p, spacing)
            want = {
                "hd max (MONAI)": (hd_max, m_hd),
                "hd pooled (medpy)": (hd_pooled, medpy_binary.hd95(p, g, voxelspacing=spacing)),
                "hd mean [003:13]": (hd_mean, 0.5 * (np.percentile(d_gp, 95) + np.percentile(d_pg, 95))),
                "hd surfel (DeepMind)": (hd_surfel, surface_distance.compute_robust_hausdorff(dm, 95)),
                "nsd voxel (MONAI)": (nsd_voxel, m_nsd),
                "nsd surfel (DeepMind)": (
                    nsd_surfel,
                    surface_distance.compute_surface_dice_at_tolerance(dm, tol),
                ),
                "asd mean [003:12]": (asd_mean, 0.5 * (d_gp.mean() + d_pg.mean())),
                "asd pooled (medpy)": (asd_pooled, medpy_binary.assd(p, g, voxelspacing=spacing)),
            }
            assert m_asd == pytest.approx(want["asd pooled (medpy)"][1], rel=RTOL)
            for key, (value, ref) in want.items():
                assert value[b, c] == pytest.approx(ref, rel=RTOL), key


@pytest.mark.backends
def test_other_percentiles_match_numpy_and_monai(rng):
    gt, pr = blobs(rng, (12, 14, 10), 1)[0], blobs(rng, (12, 14, 10), 1)[0]
    y, p = gt[None, ..., None].astype("float32"), pr[None, ..., None].astype("float32")
    d_gp, d_pg = medpy_directed(gt, pr, (1.0, 1.0, 1.0))
    for q in (0, 50, 99.5, 100):
        m_hd = monai_values(gt, pr, (1.0, 1.0, 1.0), 1.0, q)[0] if q else min(d_gp.min(), d_pg.min())
        got = ops.convert_to_numpy(functional.hd95(y, p, percentile=q))[0, 0]
        if q:
            assert got == pytest.approx(m_hd, rel=RTOL)
        pooled = ops.convert_to_numpy(functional.hd95(y, p, percentile=q, convention="pooled"))
        assert pooled[0, 0] == pytest.approx(np.percentile(np.concatenate([d_gp, d_pg]), q), rel=RTOL)


@pytest.mark.backends
def test_empty_masks():
    shape, spacing = (6, 7, 8), (1.0, 2.0, 0.5)
    y = np.zeros((3,) + shape + (1,), "float32")
    p = np.zeros_like(y)
    y[1, 2:4, 2:4, 2:4] = 1  # only y non-empty
    p[2, 1:3, 1:5, 2:6] = 1  # only p non-empty
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    fn = (
        lambda a, b: [
            functional.hd95(a, b, spacing, convention="max"),
            functional.hd95(a, b, spacing, convention="surfel"),
            functional.asd(a, b, spacing),
            functional.nsd(a, b, 1.0, spacing),
            functional.nsd(a, b, 1.0, spacing, convention="surfel"),
        ]
    )
    hd, hd_s, asd, nsd, nsd_s = (ops.convert_to_numpy(v)[:, 0] for v in fn(y, p))
    np.testing.assert_allclose(hd, [0.0, diag, diag], rtol=1e-6)
    np.testing.assert_allclose(hd_s, [0.0, diag, diag], rtol=1e-6)
    np.testing.assert_allclose(asd, [0.0, diag, diag], rtol=1e-6)
    np.testing.assert_allclose(nsd, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(nsd_s, [1.0, 0.0, 0.0])
    inf = ops.convert_to_numpy(functional.hd95(y, p, spacing, empty_value=float("inf")))[:, 0]
    assert inf[0] == 0 and np.isinf(inf[1:]).all()
    m = HD95(spacing=spacing, empty_value=5.0)
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx(10.0 / 3)


def test_bad_input_names_argument():
    y = np.zeros((1, 4, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="`spacing`"):
        functional.hd95(y, y, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="`spacing`"):
        NSD(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="same rank"):
        functional.asd(y, y[..., 0, :])
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
