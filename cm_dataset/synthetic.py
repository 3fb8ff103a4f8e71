"""A procedural, calibrated stand-in for the CM data set.

The real CM data (9 temporal bones x 7 surgeons, 64^3) [000, Sec. IV] is not
distributed with this package. `generate` draws a faithful stand-in with the
same files, labels and statistics:

* **Bones.** Each bone is a block of temporal bone seen from the surgeon:
  axis 0 runs lateral (index 0, the side the drill enters) to medial, axis 1
  posterior to anterior, axis 2 inferior to superior. It holds all 14 labels
  of `cm_dataset.LABELS`: compact bone (1) with a pneumatized mastoid (air
  cells, 2) under an irregular lateral surface; the antrum (3) with the incus
  (4) and malleus (5) medial to it; the facial nerve (6) descending in front
  of the mastoid and turning forward under the ossicles, with the chorda
  tympani (12) branching off it; the sigmoid sinus (7) curving down the
  posterior edge into the jugular bulb (13); the middle-fossa dura (8) as the
  roof; the external ear canal (9) entering from the lateral surface in
  front; the semicircular canals (10) and the cochlea (11) deep medially.
  Positions, sizes, the mastoid's pneumatization, the specimen's scale and
  its side (left ears are right ears mirrored front to back) are drawn per
  bone, so bones differ clearly in anatomy.
* **Surgeries.** A cortical mastoidectomy: a bowl entering from the lateral
  surface over the mastoid, opening the antrum, bounded by the dura above,
  the sigmoid sinus behind and the ear canal in front and kept clear of the
  facial nerve, the sinus and the dura by a safety margin, always leaving at
  least one voxel of bone over them. Only bone, air cells and antrum are
  ever drilled. Every surgeon drills the same anatomy (the shared core)
  with a personal style drawn once and kept on every bone: depth, extent,
  centre and margins; a smaller per-surgery variation and a rough drilled
  surface come on top.

The style, variation and roughness scales are calibrated so that the mean
pairwise Dice between two surgeons on the same bone, pooled as in the
paper's Experiment 2 surgeon baseline, is 0.698 +/- 0.088 and the drilled
region is about 4 % of the volume (seed 0: 0.691 +/- 0.088 and 4.2 %; seeds
0-4 average 0.700 +/- 0.088 and 3.9 %); `calibration` measures both, and how
much harder leave-one-bone-out is than leave-one-surgeon-out.
"""

import numpy as np

from cm_dataset.data import CMData

__all__ = ["generate", "calibration", "CALIBRATION_TARGETS"]

#: The paper's figures the generator is calibrated to: mean and std of the
#: Dice between the held-out surgeon and each of the 6 others on the same
#: bone, all pairs pooled (Experiment 2 surgeon baseline); the drilled
#: fraction of the volume [000, Sec. IV-V; SPEC.md Sec. 7-8].
CALIBRATION_TARGETS = {
    "surgeon_dice_mean": 0.698,
    "surgeon_dice_std": 0.088,
    "foreground_fraction": 0.04,
}

# Calibrated scales (relative units) of the surgeons' personal style and of
# the per-surgery variation; see `calibration`.
_STYLE = {"depth": 0.145, "extent": 0.13, "shift": 0.058, "margin": 0.025}
_JITTER = {"depth": 0.065, "extent": 0.052, "shift": 0.033, "margin": 0.0105}
# The drilled surface's roughness: fine-grained (20 noise cells across the
# cube), so it lowers every pair's Dice alike instead of widening the spread
# between pairs of surgeons as style does.
_ROUGHNESS = 0.2
_ROUGH_CELLS = 20
_BASE = {"rb": 0.4465, "rc": 0.4465, "depth": 0.78, "margin": 0.06}
#: Labels a cortical mastoidectomy must not touch: facial nerve, sigmoid
#: sinus, dura.
_PROTECTED = (6, 7, 8)


def _smooth_noise(rng, size, cells=6):
    """Smooth noise of unit scale on a `size^3` grid: a coarse Gaussian field
    interpolated by a separable Gaussian kernel (three small matrix products,
    far cheaper than filtering the full grid)."""
    centers = np.linspace(-1.0, 1.0, cells)
    grid = np.linspace(-1.0, 1.0, size)
    w = np.exp(-0.5 * ((grid[:, None] - centers[None, :]) / (2.0 / (cells - 1))) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    g = rng.standard_normal((cells, cells, cells))
    n = np.einsum("ia,jb,kc,abc->ijk", w, w, w, g, optimize=True)
    return (n / (n.std() + 1e-9)).astype(np.float32)


def _dilate(mask):
    """`mask` grown by one voxel in all 26 directions (separable: one
    3-voxel maximum per axis)."""
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grown = out.copy()
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _segment_distance(p, q, a, b, c):
    """Distance of every grid point (a, b, c) to the segment p-q."""
    d = np.asarray(q, np.float32) - np.asarray(p, np.float32)
    ra, rb, rc = a - p[0], b - p[1], c - p[2]
    t = np.clip((ra * d[0] + rb * d[1] + rc * d[2]) / float(d @ d), 0.0, 1.0)
    return np.sqrt((ra - t * d[0]) ** 2 + (rb - t * d[1]) ** 2 + (rc - t * d[2]) ** 2)


def _ellipsoid(a, b, c, center, radii):
    return (
        ((a - center[0]) / radii[0]) ** 2
        + ((b - center[1]) / radii[1]) ** 2
        + ((c - center[2]) / radii[2]) ** 2
    )


def _bone(rng, size):
    """One bone: the label volume and the geometry the surgeries need."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    scale = u(0.85, 1.15)
    # Coordinates in the bone's own frame: the specimen's size varies before
    # the resize to size^3, which rescales its anatomy around the centre.
    g = np.linspace(-1.0, 1.0, size, dtype=np.float32) / scale
    a, b, c = np.meshgrid(g, g, g, indexing="ij", sparse=True)
    shift_b, shift_c = u(-0.18, 0.18), u(-0.18, 0.18)
    b = b - shift_b
    c = c - shift_c

    x = np.zeros((size, size, size), np.int8)
    surface = (
        -0.72
        + u(-0.08, 0.08)
        + u(0.1, 0.25) * (b**2 + c**2)
        + 0.04 * _smooth_noise(rng, size, 5)
    )
    block = (np.abs(b / u(0.95, 1.1)) ** 4 + np.abs(c / u(0.9, 1.05)) ** 4) < 1.0
    inside = (a > surface) & block
    x[inside] = 1

    # Mastoid: posterior-inferior pneumatized region, pneumatization per bone.
    mastoid_c = (u(-0.3, -0.1), u(-0.3, -0.1), u(-0.25, -0.05))
    mastoid = _ellipsoid(a, b, c, mastoid_c, (0.6, 0.55, 0.65))
    cells = _smooth_noise(rng, size, 9) > u(-0.4, 0.6)
    x[inside & (mastoid < 1.0) & cells] = 2

    antrum_c = (u(-0.15, 0.0), u(-0.02, 0.12), u(0.12, 0.28))
    antrum = _ellipsoid(a, b, c, antrum_c, (0.11, 0.11, 0.09)) < 1.0
    x[inside & antrum] = 3
    incus_c = (
        antrum_c[0] + u(0.12, 0.18),
        antrum_c[1] + u(0.1, 0.16),
        antrum_c[2] + u(-0.02, 0.04),
    )
    x[inside & (_ellipsoid(a, b, c, incus_c, (0.05, 0.045, 0.07)) < 1.0)] = 4
    malleus_c = (incus_c[0] + 0.02, incus_c[1] + 0.1, incus_c[2] + 0.02)
    x[inside & (_ellipsoid(a, b, c, malleus_c, (0.04, 0.04, 0.09)) < 1.0)] = 5

    # Facial nerve: a descending (mastoid) segment in front of the mastoid,
    # a second genu and a tympanic segment running forward under the incus.
    f_top = (antrum_c[0] + u(0.12, 0.2), antrum_c[1] + u(0.02, 0.08), antrum_c[2] - u(0.12, 0.18))
    f_bottom = (f_top[0] + u(-0.08, 0.02), f_top[1] + u(-0.1, 0.0), -0.95)
    f_front = (f_top[0] + 0.08, f_top[1] + u(0.35, 0.45), f_top[2] + 0.05)
    nerve_d = np.minimum(
        _segment_distance(f_bottom, f_top, a, b, c), _segment_distance(f_top, f_front, a, b, c)
    )
    nerve_r = u(0.035, 0.05)
    chorda_from = (f_top[0] + 0.01, f_top[1] - 0.02, f_top[2] - u(0.3, 0.45))
    x[inside & (_segment_distance(chorda_from, malleus_c, a, b, c) < 0.022)] = 12

    # Sigmoid sinus: a thick tube down the posterior edge, bending medially
    # into the jugular bulb.
    s_top = (u(-0.25, -0.1), u(-0.75, -0.6), u(0.45, 0.6))
    s_mid = (s_top[0] + u(0.1, 0.2), s_top[1] + u(-0.05, 0.08), u(-0.3, -0.1))
    bulb_c = (s_mid[0] + u(0.25, 0.35), s_mid[1] + u(0.25, 0.4), u(-0.8, -0.65))
    sinus_d = np.minimum(
        _segment_distance(s_top, s_mid, a, b, c), _segment_distance(s_mid, bulb_c, a, b, c)
    )
    sinus_r = u(0.1, 0.14)
    x[inside & (sinus_d < sinus_r)] = 7
    x[inside & (_ellipsoid(a, b, c, bulb_c, (0.14, 0.14, 0.11)) < 1.0)] = 13

    # Middle-fossa dura: the roof, a gently tilted plate.
    tilt = u(-0.1, 0.1) * a + u(-0.08, 0.08) * b
    tegmen = u(0.42, 0.58) + tilt + 0.03 * _smooth_noise(rng, size, 4)
    x[inside & (c > tegmen) & (c < tegmen + 0.07)] = 8
    x[inside & (c >= tegmen + 0.07)] = 0

    # External ear canal: enters from the lateral surface, in front.
    canal_b, canal_c = u(0.38, 0.52), u(-0.08, 0.06)
    canal_r = u(0.11, 0.15)
    canal_d = np.sqrt((b - canal_b) ** 2 + (c - canal_c) ** 2 + np.zeros_like(a))
    canal_end = incus_c[0] - 0.05
    x[inside & (canal_d < canal_r) & (a < canal_end)] = 9

    # Deep structures: semicircular canals (three thin rings) and cochlea.
    scc_c = (antrum_c[0] + u(0.3, 0.38), antrum_c[1] - u(0.0, 0.08), antrum_c[2] + u(0.0, 0.06))
    ring = lambda p, q, r: np.abs(np.sqrt(p**2 + q**2) - r)  # noqa: E731
    da, db, dc = a - scc_c[0], b - scc_c[1], c - scc_c[2]
    scc = (
        ((ring(da, db, 0.12) < 0.025) & (np.abs(dc) < 0.025))
        | ((ring(da, dc, 0.12) < 0.025) & (np.abs(db) < 0.025))
        | ((ring(db, dc, 0.12) < 0.025) & (np.abs(da - 0.05) < 0.025))
    )
    x[inside & scc] = 10
    cochlea_c = (scc_c[0] + u(0.1, 0.18), f_front[1] + u(0.0, 0.1), f_front[2] - u(0.1, 0.2))
    x[inside & (_ellipsoid(a, b, c, cochlea_c, (0.1, 0.12, 0.09)) < 1.0)] = 11
    x[inside & (nerve_d < nerve_r)] = 6

    geometry = {
        "coords": (a, b, c),
        "surface": surface,
        "tegmen": tegmen,
        "nerve_d": nerve_d - nerve_r,
        "sinus_d": sinus_d - sinus_r,
        "canal_d": canal_d - canal_r,
        "canal_b": canal_b,
        "s_top": s_top,
        "antrum": antrum_c,
        # Voxels touching the facial nerve, the sinus or the dura: a drill
        # keeps at least one voxel of bone over them whatever the margin.
        "guard": _dilate(np.isin(x, _PROTECTED)),
    }
    return x, geometry


def _surgery(rng, x, geo, style, size):
    """One surgeon's cortical mastoidectomy on one bone, as a bool volume."""
    a, b, c = geo["coords"]
    jit = {k: float(rng.standard_normal()) * v for k, v in _JITTER.items()}
    depth = _BASE["depth"] * (1.0 + style["depth"] + jit["depth"])
    extent = 1.0 + style["extent"] + jit["extent"]
    margin = max(0.0, _BASE["margin"] + style["margin"] + jit["margin"])
    # Centre of the bowl on the lateral surface: between the sinus (behind)
    # and the ear canal (in front), below the tegmen, over the antrum.
    b0 = 0.5 * (geo["s_top"][1] + geo["canal_b"])
    b0 += style["shift_b"] + jit["shift"] * rng.standard_normal()
    c0 = geo["antrum"][2] - 0.15 + style["shift_c"] + jit["shift"] * rng.standard_normal()
    rough = _ROUGHNESS * _smooth_noise(rng, size, _ROUGH_CELLS)
    bowl = (
        ((b - b0) / (_BASE["rb"] * extent)) ** 2
        + ((c - c0) / (_BASE["rc"] * extent)) ** 2
        + ((a - geo["surface"]) / max(depth, 0.2)) ** 2
    )
    drill = (bowl + rough < 1.0) & (a > geo["surface"] - 0.05)
    drill &= geo["sinus_d"] > margin
    drill &= geo["nerve_d"] > margin * 1.3
    drill &= c < geo["tegmen"] - margin
    drill &= geo["canal_d"] > 0.5 * margin
    drill &= ~geo["guard"]
    # Only bone, air cells and antrum are removed, never a named structure.
    drill &= (x >= 1) & (x <= 3)
    return drill


def _styles(rng, n_surgeons):
    """Personal styles, one per surgeon. Each trait is standardized across
    the surgeons (mean 0, the calibrated spread) so that the spread between
    surgeons, and with it the Dice calibration, does not hinge on a lucky
    draw of a handful of surgeons."""
    traits = {
        "depth": "depth",
        "extent": "extent",
        "margin": "margin",
        "shift_b": "shift",
        "shift_c": "shift",
    }
    z = rng.standard_normal((len(traits), n_surgeons))
    if n_surgeons > 1:
        z = (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, keepdims=True)
    z = np.clip(z, -1.5, 1.5)
    return [
        {t: float(z[i, s]) * _STYLE[scale] for i, (t, scale) in enumerate(traits.items())}
        for s in range(n_surgeons)
    ]


def generate(n_bones=9, n_surgeons=7, size=64, seed=0):
    """Draw a synthetic CM data set (see the module docstring).

    Deterministic for a seed: the same arguments give identical arrays.
    Every bone and every surgery draws from its own stream, so bone 0 of a
    3-bone set equals bone 0 of the 9-bone set with the same seed and
    number of surgeons.

    Args:
        n_bones: int, number of bones. Defaults to `9`.
        n_surgeons: int, number of surgeons. Defaults to `7`.
        size: int >= 16, edge of the cube. Defaults to `64`.
        seed: int. Defaults to `0`.

    Returns:
        `CMData` with `x`, `y` of shape `(n_bones * n_surgeons, size, size,
        size)` int8, volume `bone * n_surgeons + surgeon`.

    Example:

    >>> d = generate(n_bones=2, n_surgeons=2, size=16)
    >>> d.x.shape, int(d.x.max()) <= 13, set(d.y.ravel().tolist()) <= {0, 1}
    ((4, 16, 16, 16), True, True)

    Reference:
        He et al., IJCNN 2020 [000, Sec. IV] (the data it stands in for).
    """
    checks = (("n_bones", n_bones, 1), ("n_surgeons", n_surgeons, 1), ("size", size, 16))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected an integer >= {low}. "
                f"Received: {name}={value!r}"
            )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(
            "Invalid value for argument `seed`. Expected a non-negative integer. "
            f"Received: seed={seed!r}"
        )
    styles = _styles(np.random.default_rng([seed, 1]), n_surgeons)
    xs = np.empty((n_bones * n_surgeons, size, size, size), np.int8)
    ys = np.empty_like(xs)
    for bone in range(n_bones):
        x, geo = _bone(np.random.default_rng([seed, 0, bone]), size)
        # Odd bones are left ears: the mirror image, front to back, of a right ear.
        side = (slice(None), slice(None, None, -1)) if bone % 2 else (slice(None),)
        xs[bone * n_surgeons : (bone + 1) * n_surgeons] = x[side]
        for s in range(n_surgeons):
            y = _surgery(np.random.default_rng([seed, 2, bone, s]), x, geo, styles[s], size)
            ys[bone * n_surgeons + s] = y[side]
    return CMData(xs, ys, n_bones, n_surgeons)


def _dice_matrix(y):
    """Dice between every two binary volumes of `y` (K, ...), (K, K)."""
    f = y.reshape(len(y), -1).astype(np.float32)
    inter = f @ f.T
    sizes = np.diag(inter)
    denom = sizes[:, None] + sizes[None, :]
    return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1.0), 1.0)


def calibration(data):
    """The figures the generator is calibrated to, measured on `data`.

    * `surgeon_dice_mean`, `surgeon_dice_std`: the Experiment 2 surgeon
      baseline [000, Table IV; SPEC.md Sec. 8]: for every fold (held-out
      surgeon) and bone, the held-out surgeon's region against each of the
      other surgeons' on that bone, all pairs pooled.
    * `foreground_fraction`: mean fraction of drilled voxels.
    * `within_bone_consensus_dice`: the majority vote of the training
      surgeons of a bone against each of them, pooled over the folds of
      leave-one-surgeon-out: what a model that learnt each training bone's
      consensus exactly would score in Experiment 2.
    * `cross_bone_consensus_dice`: the majority vote of the other bones'
      surgeries (voxel by voxel, ignoring the anatomy) against each surgery
      of the held-out bone, pooled over the leave-one-bone-out folds: what
      the same consensus scores on a new bone without adapting to it.
      Well below the within-bone figure means leave-one-bone-out
      (Experiment 1) is the harder task.

    Args:
        data: `CMData`.

    Returns:
        dict of floats.

    Example:

    >>> c = calibration(generate(n_bones=2, n_surgeons=3, size=16))
    >>> sorted(c)[:2]
    ['cross_bone_consensus_dice', 'foreground_fraction']
    """
    nb, ns = data.n_bones, data.n_surgeons
    y = data.y.reshape(nb, ns, -1).astype(bool)
    pairs, within = [], []
    for bone in range(nb):
        d = _dice_matrix(y[bone])
        for held in range(ns):
            others = [t for t in range(ns) if t != held]
            pairs.extend(d[held, others].tolist())
            if len(others) > 1:
                vote = y[bone, others].sum(axis=0) * 2 > len(others)
                d_vote = _dice_matrix(np.concatenate([vote[None], y[bone, others]]))
                within.extend(d_vote[0, 1:].tolist())
    cross = []
    counts = y.sum(axis=1, dtype=np.int32)
    for bone in range(nb):
        if nb < 2:
            break
        rest = counts.sum(axis=0) - counts[bone]
        vote = rest * 2 > (nb - 1) * ns
        cross.extend(_dice_matrix(np.concatenate([vote[None], y[bone]]))[0, 1:].tolist())
    return {
        "surgeon_dice_mean": float(np.mean(pairs)) if pairs else float("nan"),
        "surgeon_dice_std": float(np.std(pairs)) if pairs else float("nan"),
        "foreground_fraction": float(data.y.mean(dtype=np.float64)),
        "within_bone_consensus_dice": float(np.mean(within)) if within else float("nan"),
        "cross_bone_consensus_dice": float(np.mean(cross)) if cross else float("nan"),
    }
