"""Target packing and the slot contract (SPEC section 2): `pack_targets`,
`TargetLayout`, and every public loss on one packed target."""

import inspect

import keras
import numpy as np
import pytest
from _references import np_masked_bce, np_masked_dice
from keras import ops

import keras_seglosses as ks
from keras_seglosses import TargetLayout, map_reads, pack_targets, unpack_targets
from keras_seglosses.targets import packed_or_computed, require_map_columns


def test_pack_then_unpack_returns_the_parts(rng):
    labels = (rng.random((2, 5, 6, 7, 3)) > 0.5).astype("float32")
    m1, m2 = rng.normal(size=(2, 2, 5, 6, 7, 3)).astype("float32")
    packed = pack_targets(labels, m1, m2)
    assert packed.shape == (2, 5, 6, 7, 9) and packed.dtype == np.float32
    got_labels, maps = unpack_targets(packed, 3)
    np.testing.assert_array_equal(got_labels, labels)
    assert len(maps) == 2
    np.testing.assert_array_equal(maps[0], m1)
    np.testing.assert_array_equal(maps[1], m2)


def test_pack_accepts_channel_less_map_for_binary_labels(rng):
    labels = np.zeros((2, 4, 4, 1), "float32")
    m = rng.random((2, 4, 4)).astype("float32")
    packed = pack_targets(labels, m)
    np.testing.assert_array_equal(packed[..., 1], m)


@pytest.mark.backends
def test_pack_and_unpack_tensors():
    labels = ops.ones((2, 3, 3, 1))
    packed = pack_targets(labels, ops.zeros((2, 3, 3, 1)))
    assert tuple(packed.shape) == (2, 3, 3, 2)
    got, maps = unpack_targets(packed, 1)
    np.testing.assert_array_equal(ops.convert_to_numpy(got), 1.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(maps[0]), 0.0)


def test_pack_rejects_map_of_other_shape():
    with pytest.raises(ValueError, match=r"map 0 .*Expected the shape of `labels`"):
        pack_targets(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 5, 1)))


def test_unpack_rejects_channel_count_not_a_multiple():
    with pytest.raises(ValueError, match="multiple of the 2 channel"):
        unpack_targets(np.zeros((1, 4, 4, 3)), 2)


def test_unpack_rejects_missing_channel_axis():
    with pytest.raises(ValueError, match="channels_last"):
        unpack_targets(np.zeros((4,)), 1)


@pytest.mark.backends
@pytest.mark.parametrize("batch", [True, False])
def test_map_columns_are_the_flattened_channels(rng, batch):
    labels = rng.random((2, 3, 4, 2)).astype("float32")
    m1, m2 = rng.random((2, 2, 3, 4, 2)).astype("float32")
    ys, ms = require_map_columns(pack_targets(labels, m1, m2), 2, 1, batch, "L", "second map")
    lead = (-1,) if batch else (2, -1)
    for k in range(2):
        np.testing.assert_array_equal(ops.convert_to_numpy(ys[k]), labels[..., k].reshape(lead))
        np.testing.assert_array_equal(ops.convert_to_numpy(ms[k]), m2[..., k].reshape(lead))
    with pytest.raises(ValueError, match=r"`L` reads the second map at packed map slot 1.*at least 6 channels.*pack_targets"):
        require_map_columns(pack_targets(labels, m1), 2, 1, batch, "L", "second map")


def test_packed_or_computed_reads_the_slot_or_computes(rng):
    y, a, b = rng.random((3, 2, 4, 5, 1)).astype("float32")
    computed = np.full(y.shape, 7.0, "float32")

    def read(t, index, channels=None):
        return ops.convert_to_numpy(
            packed_or_computed(t, 1, index, lambda: computed, "L", "map", channels=channels)
        )

    packed = pack_targets(y, a, b)
    np.testing.assert_array_equal(read(packed, 0), a)
    np.testing.assert_array_equal(read(packed, 1), b)
    np.testing.assert_array_equal(read(packed, None), computed)  # None: always computed
    # a two-channel map of one sigmoid channel spans two slots
    np.testing.assert_array_equal(read(packed, 0, 2), np.concatenate([a, b], -1))
    # an explicit slot that is not there is an error, never a silent fallback
    with pytest.raises(ValueError, match=r"`L` reads the map at packed map slot 2"):
        read(packed, 2)
    with pytest.raises(ValueError, match=r"slot 2 .*at least 4 channels"):
        read(packed, 1, 2)
    with pytest.raises(ValueError, match="multiple of the 2 channel"):
        packed_or_computed(packed, 2, 0, lambda: computed, "L", "map")


# ------------------------------------------------------------ TargetLayout
def test_layout_names_the_slots(rng):
    y = (rng.random((2, 4, 5, 1)) > 0.5).astype("float32")
    m, phi = rng.normal(size=(2, 2, 4, 5, 1)).astype("float32")
    rrw = rng.normal(size=(2, 4, 5, 2)).astype("float32")
    layout = TargetLayout(("rpmap", "rrw", "phi"), slots={"rrw": 2})
    assert [layout.index(k) for k in layout.kinds] == [0, 1, 3]
    packed = layout.pack(y, phi=phi, rpmap=m, rrw=rrw)
    np.testing.assert_array_equal(packed, np.concatenate([y, m, rrw, phi], -1))
    labels, maps = layout.unpack(packed, 1)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(maps["rrw"], rrw)
    np.testing.assert_array_equal(maps["phi"], phi)
    with pytest.raises(ValueError, match=r"kind.*Expected one of \['rpmap', 'rrw', 'phi'\].*'mask'"):
        layout.index("mask")
    with pytest.raises(ValueError, match=r"Missing: \['phi'\]; unexpected: \['soft'\]"):
        layout.pack(y, rpmap=m, rrw=rrw, soft=m)
    with pytest.raises(ValueError, match=r"map 'rrw'.*Expected \(2, 4, 5, 2\)"):
        layout.pack(y, rpmap=m, rrw=m, phi=phi)
    with pytest.raises(ValueError, match="expected 4 map slot"):
        layout.unpack(packed[..., :3], 1)
    with pytest.raises(ValueError, match="distinct"):
        TargetLayout(("phi", "phi"))


def test_layout_of_a_loss_and_its_check():
    loss = ks.Compound([
        (ks.RewardPenaltyDice(), 1.0),
        (ks.RegionWise(map_index=1), 1.0),
        (ks.Boundary(map_index=3), 1.0),
        (ks.HausdorffDT(), 1.0),  # computes its map: reads nothing
    ])
    layout = TargetLayout.for_reader(loss, n_classes=1)
    assert layout == TargetLayout(("rpmap", "rrw", "phi"), slots={"rrw": 2})
    layout.check(loss, 1)
    with pytest.raises(ValueError, match=r"`Boundary`.*reads 'phi' at map slot 0.*'phi' is at slot 3"):
        layout.check(ks.Boundary(map_index=0), 1)
    assert TargetLayout.for_reader(ks.Dice()) == TargetLayout(())
    with pytest.raises(ValueError, match="consecutive slots from 0"):
        TargetLayout.for_reader(ks.Boundary(map_index=2))


# ------------------------------------------------- every loss, one target
def _maps(y):
    """Each map kind a loss can be pointed at, from the labels (the maps'
    own correctness is tested against scipy in their modules)."""
    rw = {"rrw": ks.rrw_map, "rw_boundary": ks.boundary_map, "rw_ac": lambda t: ks.ac_map(t)}
    makers = {"phi": ks.signed_distance_map, "distance": ks.boundary_distance,
              "dpce": ks.dpce_penalty_map, **rw}
    return {kind: np.asarray(ops.convert_to_numpy(f(y)), "float32") for kind, f in makers.items()}


def _public_losses():
    out = {}
    for name in ks.losses.__all__:
        cls = getattr(ks.losses, name)
        if isinstance(cls, type) and issubclass(cls, keras.losses.Loss) and cls is not ks.Compound:
            out[name] = cls
    return out


_REQUIRED = {
    "WeightedCrossEntropy": {"class_weights": (1.0, 3.0)},
    "GeneralizedWassersteinDice": {"distance_matrix": [[0.0, 1.0], [1.0, 0.0]]},
    "DeepSupervision": {"loss": ks.RewardPenaltyDice()},
    "DownsampledTarget": {"loss": ks.Boundary()},
    "RegionSpecificDice": {"grid": 4},
    "AdaptiveRegionSpecificTversky": {"grid": 4},
}


@pytest.mark.parametrize("name", sorted(_public_losses()))
def test_every_loss_on_a_target_packed_with_an_rpmap_and_a_phi_map(name, rng):
    """The contract of SPEC section 2: a loss reads a packed map only where
    told. On `pack_targets(labels, M, phi)` every loss equals itself on plain
    labels (RPDL: on `pack_targets(labels, M)`, the only map it needs), and
    one pointed at a slot holding its map equals itself computing that map."""
    cls = _public_losses()[name]
    y = np.zeros((2, 12, 12, 12, 1), "float32")
    y[0, 3:9, 2:8, 4:10] = 1.0
    y[1, 5:11, 5:11, 1:6] = 1.0
    p = rng.uniform(0.05, 0.95, y.shape).astype("float32")
    m = np.where(y > 0, 1.0, rng.choice([-1.0, 0.5], y.shape)).astype("float32")
    maps = _maps(y)
    packed = pack_targets(y, m, maps["phi"])
    loss = cls(**_REQUIRED.get(name, {}))
    value = lambda l, t: float(ops.convert_to_numpy(l(t, p)))
    alone = pack_targets(y, m) if map_reads(loss) else y
    np.testing.assert_allclose(value(loss, packed), value(loss, alone), rtol=1e-5, atol=1e-6)
    if "map_index" in inspect.signature(cls).parameters and not map_reads(loss):
        pointed = cls(map_index=1, **_REQUIRED.get(name, {}))
        (read,) = map_reads(pointed, 1)
        target = pack_targets(y, m, *np.split(maps[read.kind], read.slots, axis=-1))
        np.testing.assert_allclose(value(pointed, target), value(loss, y), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- ignore masks
# The `"mask"` map (1 counts, 0 ignored) of every loss and metric: the
# ignored voxels' labels, maps and predictions reach neither the value nor
# the gradient, and for losses of voxel sums and means the value is the
# loss of the counted voxels alone.

def _public_metrics():
    out = {}
    for name in ks.metrics.__all__:
        cls = getattr(ks.metrics, name)
        if isinstance(cls, type) and issubclass(cls, keras.metrics.Metric):
            out[name] = cls
    return out


def _masked_case(rng, counted=None):
    """Labels, prediction, rpmap and an ignore mask `(2, 8, 8, 8, 1)`; with
    `counted`, exactly that many counted voxels per sample."""
    y = np.zeros((2, 8, 8, 8, 1), "float32")
    y[0, 2:6, 1:5, 3:7] = 1.0
    y[1, 3:8, 3:8, 1:4] = 1.0
    p = rng.uniform(0.05, 0.95, y.shape).astype("float32")
    m = np.where(y > 0, 1.0, rng.choice([-1.0, 0.5], y.shape)).astype("float32")
    mask = np.ones_like(y)
    if counted is None:
        mask[rng.uniform(size=y.shape) < 0.3] = 0.0
        mask[:, 2:4, 2:4, 2:6] = 0.0  # a block cutting through the foreground
    else:
        for b in range(y.shape[0]):
            flat = mask[b].reshape(-1)
            flat[rng.permutation(flat.size)[counted:]] = 0.0
    return y, p, m, mask


def _perturbed(rng, mask, *arrays):
    """Each array with new values at the ignored voxels (labels flipped)."""
    ignored = mask == 0
    out = []
    for a in arrays:
        if set(np.unique(a)) <= {0.0, 1.0}:
            other = 1.0 - a
        else:
            other = rng.uniform(a.min() - 1, a.max() + 1, a.shape)
        out.append(np.where(ignored, other, a).astype("float32"))
    return out


def _with_mask(cls, kwargs, y, m, mask):
    """`(reader, target)`: `cls` reading the mask after the maps it needs
    (the rpmap, or the map its `map_kind` names, packed at slot 0)."""
    probe = cls(**kwargs)
    reads = map_reads(probe, 1)
    maps = []
    for read in reads:
        maps += [m] if read.kind in ("rpmap", "soft", "consensus") else list(
            np.split(_maps(y)[read.kind], read.slots, axis=-1))
    reader = cls(**kwargs, mask_index=len(maps))
    return reader, maps


_MASK_METRIC_ARGS = {"RPD": {"map_index": 0}, "QUBIQ": {"map_index": 0},
                     "ConsensusDice": {"map_index": 0}}


@pytest.mark.parametrize("family, name", [("loss", n) for n in sorted(_public_losses())]
                         + [("metric", n) for n in sorted(_public_metrics())])
def test_every_loss_and_metric_ignores_masked_voxels(family, name, rng):
    is_loss = family == "loss"
    cls = (_public_losses() if is_loss else _public_metrics())[name]
    kwargs = (_REQUIRED if is_loss else _MASK_METRIC_ARGS).get(name, {})
    y, p, m, mask = _masked_case(rng)
    soft = name in ("QUBIQ", "ConsensusDice")
    if soft:  # read a soft consensus; its labels are the majority
        m = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], y.shape).astype("float32")
        y = (m > 0.5).astype("float32")
    reader, maps = _with_mask(cls, kwargs, y, m, mask)
    assert ("mask", len(maps), 1) in [tuple(r) for r in map_reads(reader, 1)]
    assert type(reader).from_config(reader.get_config()).get_config() == reader.get_config()

    def value(target, pred):
        if is_loss:
            return float(ops.convert_to_numpy(reader(target, pred)))
        reader.reset_state()
        reader.update_state(target, pred)
        return float(ops.convert_to_numpy(reader.result()))

    target = pack_targets(y, *maps, mask)
    y2, p2, *maps2 = _perturbed(rng, mask, y, p, *maps)
    masked = value(target, p)
    np.testing.assert_allclose(value(pack_targets(y2, *maps2, mask), p2), masked,
                               rtol=1e-5, atol=1e-6)
    unmasked = value(pack_targets(y, *maps, np.ones_like(mask)), p)
    assert abs(masked - unmasked) > 1e-4, "the mask changed nothing"


@pytest.mark.backends
@pytest.mark.parametrize("name", sorted(_public_losses()))
def test_every_loss_has_no_gradient_at_ignored_voxels(name, rng, autodiff):
    cls = _public_losses()[name]
    y, p, m, mask = _masked_case(rng)
    reader, maps = _with_mask(cls, _REQUIRED.get(name, {}), y, m, mask)
    target = pack_targets(y, *maps, mask)
    grad = autodiff(lambda x: ops.sum(reader.call(target, x)))(p)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[mask == 0] == 0.0)
    assert np.any(grad[mask > 0] != 0.0)


# Losses of voxel sums and means: masked, they are the loss of the counted
# voxels gathered into a (batch, n, 1, C) volume.
_SEPARABLE = ["Dice", "WeightedBinaryCrossentropy", "RewardPenaltyDice", "IoU", "Tversky",
              "FocalTversky", "AsymmetricSimilarity", "SensitivitySpecificity",
              "GeneralizedDice", "PenaltyGeneralizedDice", "GeneralizedWassersteinDice",
              "Lovasz", "CrossEntropy", "WeightedCrossEntropy", "TopK", "Focal", "DiceCE",
              "DiceFocal", "DiceTopK", "ExpLog"]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("name", _SEPARABLE)
def test_masked_separable_loss_is_the_loss_of_the_counted_voxels(name, batch, rng):
    cls = _public_losses()[name]
    kwargs = dict(_REQUIRED.get(name, {}))
    if "batch" in inspect.signature(cls).parameters:
        kwargs["batch"] = batch
    elif batch:
        pytest.skip("no batch argument")
    y, p, m, mask = _masked_case(rng, counted=300)
    reader, maps = _with_mask(cls, kwargs, y, m, mask)
    plain = cls(**kwargs)
    keep = mask[..., 0] > 0
    gather = lambda a: a[keep].reshape(2, -1, 1, a.shape[-1])
    expected = float(ops.convert_to_numpy(
        plain(pack_targets(gather(y), *[gather(x) for x in maps]), gather(p))))
    got = float(ops.convert_to_numpy(reader(pack_targets(y, *maps, mask), p)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.backends
@pytest.mark.parametrize("name", ["Dice", "DiceBatch", "CrossEntropy",
                                  "WeightedBinaryCrossentropy"])
def test_independent_channels_are_masked_channel_by_channel(name, rng, autodiff):
    """Sigmoid channels (probabilities of C > 1 channels to an overlap loss,
    `multi_label` cross entropy) do not couple: a mask that differs between
    the channels of a voxel counts each channel's entries on their own (not
    the per-voxel minimum), and only the ignored entries lose gradient."""
    shape = (2, 5, 6, 4, 3)
    y = (rng.random(shape) < 0.4).astype("float32")
    p = rng.uniform(0.05, 0.95, shape).astype("float32")
    mask = (rng.random(shape) < 0.6).astype("float32")
    mask[0, 0, 0, 0] = (1.0, 0.0, 1.0)  # surely a voxel counted in part
    loss, want = {
        "Dice": (ks.Dice(batch=False, mask_index=0),
                 lambda y, p: np_masked_dice(y, p, mask)),
        "DiceBatch": (ks.Dice(batch=True, mask_index=0),
                      lambda y, p: np_masked_dice(y, p, mask, batch=True)),
        "CrossEntropy": (ks.CrossEntropy(multi_label=True, mask_index=0),
                         lambda y, p: np_masked_bce(y, p, mask)),
        "WeightedBinaryCrossentropy": (ks.WeightedBinaryCrossentropy(mask_index=0),
                                       lambda y, p: np_masked_bce(y, p, mask)),
    }[name]
    target = pack_targets(y, mask)
    np.testing.assert_allclose(ops.convert_to_numpy(loss.call(target, p)), want(y, p),
                               rtol=1e-5, atol=1e-6)
    y2, p2 = _perturbed(rng, mask, y, p)
    np.testing.assert_allclose(ops.convert_to_numpy(loss.call(pack_targets(y2, mask), p2)),
                               want(y, p), rtol=1e-5, atol=1e-6)
    grad = autodiff(lambda x: ops.sum(loss.call(target, x)))(p)
    assert np.all(grad[mask == 0] == 0.0)
    partly = (mask.min(-1, keepdims=True) == 0) & (mask > 0)
    assert np.all(grad[partly] != 0.0), "a counted entry of a partly ignored voxel"


def test_mask_index_must_differ_from_the_map_slot():
    with pytest.raises(ValueError, match="mask_index"):
        ks.RewardPenaltyDice(map_index=0, mask_index=0)
    with pytest.raises(ValueError, match="mask_index"):
        ks.Dice(mask_index=-1)


def test_missing_mask_slot_names_the_helper(rng):
    y, p, _, _ = _masked_case(rng)
    with pytest.raises(ValueError, match="ignore mask.*`mask_index`.*pack_targets"):
        ks.Dice(mask_index=0)(y, p)


# ------------------------------------------- masked value = cropped value
# With a box of counted voxels every maskable loss must equal itself on the
# box cropped out: a mean over all voxels instead of the counted ones, or an
# ignored voxel reaching a sum, a map or a skeleton, breaks the equality.
# The volume is (2, 6, 6, 6) and the box [2:6]^3. Inside it the objects
# (labels, and predictions above 0.5) lie in the core [3:6]^3, so a distance
# map of the masked volume (ignored voxels are background there) equals that
# of the crop: every object voxel is nearer to the box's own background than
# to the ignored region. The box's cells of 2 voxels align with the
# region-specific grid and the deep-supervision pooling.
_BOX = (slice(None), slice(2, 6), slice(2, 6), slice(2, 6))

# maps computed from the whole masked volume and normalized by their maximum
# over it (RRW, DPCE) differ from the crop's, by design: read packed maps
# (those losses' masked maps are checked against scipy in their modules)
_PACKED_MAP = ("RegionWise", "DistancePenalizedCrossEntropy")
# soft skeletons erode through the box faces: they need predictions 0 there
_SKELETON = ("SoftClDice", "DiceClDice")


def _box_loss(name, c, from_logits, crop, mask_index=None):
    """The loss `name` for the box tests: with `crop`, its twin on the
    cropped volume (the grid scaled to it)."""
    cls = _public_losses()[name]
    masked = {} if mask_index is None else {"mask_index": mask_index}
    if name == "DeepSupervision":
        return cls(ks.RewardPenaltyDice(from_logits=from_logits), **masked)
    if name == "DownsampledTarget":
        return cls(ks.Dice(from_logits=from_logits), **masked)
    kwargs = {"from_logits": from_logits, **masked}
    if name == "WeightedCrossEntropy":
        kwargs["class_weights"] = (1.0, 3.0) if c == 1 else (1.0, 2.0, 3.0)
    elif name == "GeneralizedWassersteinDice":
        kwargs["distance_matrix"] = (
            [[0, 1], [1, 0]] if c == 1 else [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]])
    elif name in ("RegionSpecificDice", "AdaptiveRegionSpecificTversky"):
        kwargs["grid"] = 2 if crop else 3
    elif name in _PACKED_MAP:
        kwargs["map_index"] = 0
    elif name == "DiceBoundary":
        kwargs["alpha"] = 0.5  # the default 1 weighs the boundary term 0
    if c > 1 and "include_background" in inspect.signature(cls).parameters:
        # the background class fills the box up to its faces
        kwargs["include_background"] = False
    return cls(**kwargs)


def _box_predictions(name, x):
    """What the loss takes for logits or probabilities `x`: the outputs of a
    deep-supervision model, finest first, or the coarse output."""
    if name == "DeepSupervision":
        return [x, x[:, ::2, ::2, ::2]]
    if name == "DownsampledTarget":
        return x[:, ::2, ::2, ::2]
    return x


def _box_case(rng, c, from_logits, skeleton):
    """Labels, the prediction the loss takes (logits or probabilities) and
    the box, `(2, 6, 6, 6, c)`. Object voxels only in the core; with
    `skeleton` the foreground predictions are 0 on the box faces."""
    shape = (2, 6, 6, 6, c)
    box = np.zeros(shape[:-1], bool)
    box[_BOX] = True
    faces = box.copy()
    faces[:, 3:, 3:, 3:] = False
    classes = rng.integers(0, max(c, 2), shape[:-1])
    classes[faces] = 0
    classes[:, 4, 4, 4], classes[:, 5, 3, 5] = 1, c - 1 if c > 1 else 1
    y = (classes[..., None] == 1).astype("float32") if c == 1 else np.eye(c)[classes]
    logits = rng.normal(size=shape) * 1.5
    if c == 1:
        logits[faces] = -np.abs(logits[faces]) - 0.2  # p < 0.5
    else:
        logits[faces, 0] = logits[faces].max(-1) + 0.5  # every foreground class < 0.5
    if skeleton:
        logits[faces] = -200.0 if c == 1 else [0.0] + [-200.0] * (c - 1)
    if from_logits:
        return y.astype("float32"), logits.astype("float32"), box
    if c == 1:
        p = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    return y.astype("float32"), p.astype("float32"), box


def _redrawn(rng, ignored, y, x, maps, from_logits):
    """`y`, `x` and `maps` with new values at the `ignored` voxels."""
    c = y.shape[-1]
    if c == 1:
        y = np.where(ignored[..., None], 1.0 - y, y)
    else:
        other = np.eye(c)[rng.integers(0, c, ignored.shape)]
        y = np.where(ignored[..., None], other, y)
    fresh = rng.normal(size=x.shape) * 3 if from_logits else rng.uniform(0, 1, x.shape)
    x = np.where(ignored[..., None], fresh, x)
    maps = [np.where(ignored[..., None], rng.normal(size=m.shape), m) for m in maps]
    return y.astype("float32"), x.astype("float32"), [m.astype("float32") for m in maps]


def _box_maps(rng, name, y, from_logits):
    """The maps the loss reads, slot by slot: an rpmap of the labels, any
    other map random (the loss only weighs voxels by it)."""
    maps = []
    for read in map_reads(_box_loss(name, y.shape[-1], from_logits, crop=False), y.shape[-1]):
        if read.kind == "rpmap":
            maps.append(np.where(y > 0, 1.0, rng.choice([-1.0, 0.5], y.shape)).astype("f4"))
        else:
            maps += [rng.normal(size=y.shape).astype("f4") for _ in range(read.slots)]
    return maps


def _value_and_gradient(loss, name, target, x):
    """The per-sample values of `loss` and the gradient of their sum with
    respect to `x`, eagerly: compiling some 150 configurations takes minutes
    (the compiled path is the next test's)."""

    def values(v):
        return loss.call(target, _box_predictions(name, v))

    x = np.asarray(x, np.float32)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def total(v):
            out = values(v)
            return ops.sum(out), out

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(x)
        return np.asarray(value, np.float64), np.asarray(grad)
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(v)
            value = values(v)
            out = tf.reduce_sum(value)
        return value.numpy().astype(np.float64), tape.gradient(out, v).numpy()
    import torch

    v = torch.tensor(x, requires_grad=True)
    value = values(v)
    value.sum().backward()
    return value.detach().numpy().astype(np.float64), v.grad.numpy()


def _assert_box_gradient(name, got, want):
    if name in _SKELETON:
        # on the faces a prediction of 0 ties with the ignored zeros beside
        # it in the skeleton's min- and max-pooling, which may pass the
        # gradient of a tie to either: compare the core
        got, want = got[:, 1:, 1:, 1:], want[:, 1:, 1:, 1:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(want).max()))


def _takes_logits(name):
    if name in ("DeepSupervision", "DownsampledTarget"):
        return True  # through the wrapped loss
    return "from_logits" in inspect.signature(_public_losses()[name]).parameters


def _box_configs():
    """`(name, C, from_logits, channel_varying)` for every maskable loss:
    one sigmoid channel and three softmax classes, probabilities and logits
    where the loss takes them, and with logits of several classes a mask
    that differs between channels outside the box. Under JAX and torch
    (`backends`) two per loss: the softmax rule's and one sigmoid channel
    (eager JAX takes about a second per configuration)."""
    out = []
    for name in sorted(_public_losses()):
        logits = _takes_logits(name)
        for c in (1, 3):
            for from_logits in (False, True):
                if from_logits and not logits:
                    continue
                again = (c, from_logits) == (1, False) or (not logits and c == 3)
                marks = [pytest.mark.backends] if again else []
                out.append(pytest.param(name, c, from_logits, False, marks=marks))
        if logits:
            out.append(pytest.param(name, 3, True, True, marks=[pytest.mark.backends]))
    return out


def _channel_varying_mask(rng, box, c):
    """Every channel counts in the box; outside it some channels count, but
    never all of a voxel's, so its per-voxel minimum is the box."""
    mask = (rng.random((box.size, c)) < 0.6).astype("float32")
    mask[np.arange(box.size), rng.integers(0, c, box.size)] = 0.0
    mask = mask.reshape(*box.shape, c)
    mask[box] = 1.0
    assert np.any((mask.min(-1) == 0) & (mask.max(-1) == 1))
    return mask


@pytest.mark.parametrize("name, c, from_logits, channel_varying", _box_configs())
def test_masked_loss_is_the_loss_of_the_counted_box(name, c, from_logits, channel_varying,
                                                    rng):
    """Value and gradient with a box mask are those of the loss on the box
    alone (its own volume), the gradient is exactly 0 outside the box, and
    new labels, maps or predictions there change neither. With a softmax of
    logits (C > 1) a voxel counts only where all its channels count: a mask
    whose per-voxel minimum is the box gives the box's loss, and no logit of
    a partly ignored voxel gets gradient."""
    y, x, box = _box_case(rng, c, from_logits, name in _SKELETON)
    plain = _box_loss(name, c, from_logits, crop=True)
    maps = _box_maps(rng, name, y, from_logits)
    reader = _box_loss(name, c, from_logits, crop=False, mask_index=len(maps))
    if channel_varying:
        mask = _channel_varying_mask(rng, box, c)
    else:
        mask = np.repeat(box[..., None], c, axis=-1).astype("float32")

    crop = lambda a: a[_BOX]
    want, want_grad = _value_and_gradient(
        plain, name, pack_targets(crop(y), *map(crop, maps)), crop(x))
    for y_, x_, maps_ in ((y, x, maps), _redrawn(rng, ~box, y, x, maps, from_logits)):
        got, grad = _value_and_gradient(reader, name, pack_targets(y_, *maps_, mask), x_)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        assert np.all(np.isfinite(grad))
        assert np.all(grad[~box] == 0.0), "an ignored voxel got gradient"
        _assert_box_gradient(name, crop(grad), want_grad)
    assert np.any(want_grad != 0.0)


@pytest.mark.backends
@pytest.mark.parametrize("name", ["Dice", "CrossEntropy", "WeightedBinaryCrossentropy"])
def test_compiled_softmax_gives_no_gradient_to_a_partly_ignored_voxel(name, rng, jit,
                                                                      autodiff):
    """The compiled path (XLA, `jax.jit`) of the softmax rule: a mask that
    differs between channels leaves every logit of a voxel with an ignored
    channel without gradient, and the value is that of the box alone."""
    c = 3
    y, x, box = _box_case(rng, c, True, False)
    mask = _channel_varying_mask(rng, box, c)
    reader = _box_loss(name, c, True, crop=False, mask_index=0)
    plain = _box_loss(name, c, True, crop=True)
    target = pack_targets(y, mask)
    got = ops.convert_to_numpy(jit(reader.call)(target, x))
    want = ops.convert_to_numpy(plain.call(y[_BOX], x[_BOX]))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    grad = autodiff(lambda v: ops.sum(reader.call(target, v)))(x)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~box] == 0.0), "a logit of a partly ignored voxel got gradient"
    want_grad = autodiff(lambda v: ops.sum(plain.call(y[_BOX], v)))(x[_BOX])
    _assert_box_gradient(name, grad[_BOX], want_grad)
