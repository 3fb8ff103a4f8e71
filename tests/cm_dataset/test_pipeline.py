"""The tf.data pipeline: encodings, targets, subsets, exact augmentation,
determinism, and model.fit on every backend."""

import keras
import numpy as np
import pytest
from _references import np_encode_input, np_rpmap

from cm_dataset import CMData, generate, get_split, make_arrays, make_dataset
from cm_dataset import augment as aug
from keras_seglosses.rpmap import legacy_reward_penalty_targets

SIZE = 8


@pytest.fixture(scope="module")
def data():
    """3 bones x 3 surgeons, the 8^3 centre of a 16^3 draw: data volumes
    keep the per-sample checks cheap (the pipeline takes any cube size)."""
    d = generate(n_bones=3, n_surgeons=3, size=16, seed=2)
    crop = (slice(None),) + (slice(4, 4 + SIZE),) * 3
    return CMData(d.x[crop].copy(), d.y[crop].copy(), 3, 3)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _reference(data, experiment, fold, subset, targets, encoding="scaled"):
    """Independent numpy transcription: input encodings, RPMap count / max
    or -1 [000, Fig. 2] from the allowed surgeons, the legacy target via
    `legacy_reward_penalty_targets` with -K and n_surgeons - 1 (the
    released code: -7 and 6 for its bones, -6 and 6 for its surgeons)."""
    nb, ns, held = data.n_bones, data.n_surgeons, fold - 1
    train, val = get_split(experiment, fold, nb, ns).train_val(0.1)
    if experiment == 1:  # SPEC.md Sec. 8: the held-out bone vs its surgeons
        test = [(held, s) for s in range(ns)]
        allowed = {b: range(ns) for b in range(nb)}
    else:  # every bone vs each training surgeon, maps from the same
        test = [(b, s) for b in range(nb) for s in range(ns) if s != held]
        allowed = {b: [s for s in range(ns) if s != held] for b in range(nb)}
    pairs = {"train": train, "val": val, "test": test}[subset]
    xs, ys = [], []
    for b, s in pairs:
        xs.append(np_encode_input(data.x[b * data.n_surgeons + s], encoding))
        y = data.y[b * data.n_surgeons + s].astype(np.float64)
        stack = np.stack([data.y[b * data.n_surgeons + k] for k in allowed[b]]).astype(np.float64)
        if targets == "plain":
            ys.append(y[..., None])
        elif targets == "rpdl":
            ys.append(np.stack([y, np_rpmap(stack)], axis=-1))
        else:
            k = len(allowed[b])
            ys.append(legacy_reward_penalty_targets(y, stack, penalty=-k, scale=ns - 1)[..., None])
    return np.stack(xs), np.stack(ys)


@pytest.mark.parametrize("targets", ["rpdl", "plain", "legacy"])
@pytest.mark.parametrize(
    "experiment, fold, subset", [(1, 2, "test"), (2, 3, "val"), (2, 1, "test")]
)
def test_arrays_and_unaugmented_dataset_match_reference(data, targets, experiment, fold, subset):
    rx, ry = _reference(data, experiment, fold, subset, targets)
    x, y = make_arrays(data, experiment, fold, subset=subset, targets=targets)
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(x, rx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, ry, rtol=1e-6, atol=1e-6)
    ds = make_dataset(
        data, experiment, fold, subset=subset, batch_size=4, targets=targets, augment=None
    )
    got = _batches(ds)
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)


def test_onehot(data):
    rx, _ = _reference(data, 1, 1, "test", "plain", "onehot")
    x, _ = make_arrays(data, 1, 1, input_encoding="onehot")
    np.testing.assert_array_equal(x, rx)
    (bx, by), = _batches(make_dataset(data, 1, 1, "test", batch_size=4, input_encoding="onehot"))
    np.testing.assert_array_equal(bx, x)
    assert bx.shape == (3, SIZE, SIZE, SIZE, 14) and by.shape == (3, SIZE, SIZE, SIZE, 2)


def test_train_shapes_drop_remainder_and_sizes(data):
    # Exp. 1 fold 1: 6 training pairs, 1 of them validation -> 5 train.
    got = _batches(make_dataset(data, 1, 1, batch_size=2))
    assert len(got) == 2
    for x, y in got:
        assert x.shape == (2, SIZE, SIZE, SIZE, 1) and y.shape == (2, SIZE, SIZE, SIZE, 2)
        assert x.dtype == y.dtype == np.float32
    val = _batches(make_dataset(data, 1, 1, subset="val", batch_size=4))
    assert sum(len(x) for x, _ in val) == 1
    n48 = sum(len(x) for x, _ in _batches(make_dataset(data, 1, 1, batch_size=7, augment="all48")))
    assert n48 == (5 * 48) // 7 * 7
    test216 = _batches(
        make_dataset(data, 1, 1, subset="test", batch_size=216, augment="original216")
    )
    assert sum(len(x) for x, _ in test216) == 3 * 216


def _match(x, y, originals):
    """Find the pair and symmetry that produced an augmented sample and check
    that the same symmetry moved x, y and M."""
    for i, (ox, oy) in enumerate(originals):
        for k in range(48):
            if np.array_equal(aug.apply(ox, k), x):
                if np.array_equal(aug.apply(oy, k), y):
                    return i, k
    return None


@pytest.mark.parametrize("augment", ["random", "all48"])
def test_augmentation_is_exact_and_identical_on_x_y_m(data, augment):
    ox, oy = make_arrays(data, 2, 1, subset="train")
    originals = list(zip(ox, oy))
    found = set()
    for x, y in _batches(make_dataset(data, 2, 1, batch_size=4, augment=augment, seed=3)):
        for xi, yi in zip(x, y):
            hit = _match(xi, yi, originals)
            assert hit is not None
            found.add(hit)
    if augment == "all48":
        # 5 pairs x 48 = 240 samples in batches of 4: every (pair, symmetry) once.
        assert len(found) == len(originals) * 48
    else:
        assert len(found) == 4 and len({k for _, k in found}) > 1


def test_original216_test_time_enumeration(data):
    ox, oy = make_arrays(data, 1, 3, subset="test")
    ds = make_dataset(data, 1, 3, subset="test", batch_size=216, augment="original216")
    x, y = _batches(ds)[0]
    # The first pair's 216 variants, in the original's order (the indices
    # are checked against scipy.ndimage.rotate in test_augment.py).
    idx = aug.original216_indices()
    for j in range(216):
        np.testing.assert_array_equal(x[j], aug.apply(ox[0], idx[j]))
        np.testing.assert_array_equal(y[j], aug.apply(oy[0], idx[j]))
    assert len({x[j].tobytes() for j in range(216)}) == 48


def test_deterministic_per_seed_and_reshuffled_per_epoch(data):
    import tensorflow as tf

    a = make_dataset(data, 2, 2, batch_size=2, seed=7)
    tf.random.set_seed(123)  # the global seed (keras.utils.set_random_seed) plays no part
    b = make_dataset(data, 2, 2, batch_size=2, seed=7)
    c = make_dataset(data, 2, 2, batch_size=2, seed=8)
    a1, a2 = _batches(a), _batches(a)
    b1, b2 = _batches(b), _batches(b)
    for p, q in zip(a1 + a2, b1 + b2):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])
    flat = lambda bs: np.concatenate([x for x, _ in bs])  # noqa: E731
    assert not np.array_equal(flat(a1), flat(a2))  # fresh order and symmetries each epoch
    assert not np.array_equal(flat(a1), flat(_batches(c)))


def test_exp2_test_subset_is_scored_against_training_surgeons(data):
    """SPEC.md Sec. 8: in Exp. 2 a prediction of each bone is compared with
    the training surgeons, so `evaluate` on "test" gives the paper's
    Overall; the held-out surgeon is only the baseline."""
    x, y = make_arrays(data, 2, 3, subset="test", targets="plain")
    assert len(x) == 3 * 2  # 3 bones x 2 training surgeons
    want = [data.y[b * 3 + s] for b in range(3) for s in (0, 1)]
    np.testing.assert_array_equal(y[..., 0], np.stack(want))
    (bx, by), = _batches(make_dataset(data, 2, 3, "test", batch_size=8, targets="plain"))
    np.testing.assert_array_equal(by, y)


@pytest.mark.parametrize("targets", ["rpdl", "legacy"])
def test_exp2_pipeline_never_sees_held_out_surgeon(data, targets):
    y = data.y.copy()
    y[1::3] = 1 - y[1::3]  # surgeon 2 (fold 2) drills everywhere else
    altered = CMData(data.x, y, 3, 3)
    for subset in ("train", "val", "test"):
        for make in (make_dataset, make_arrays):
            kw = {"batch_size": 2, "augment": None} if make is make_dataset else {}
            p, q = (make(d, 2, 2, subset=subset, targets=targets, **kw) for d in (data, altered))
            if make is make_dataset:
                p, q = (tuple(np.concatenate(t) for t in zip(*_batches(ds))) for ds in (p, q))
            np.testing.assert_array_equal(p[0], q[0])
            np.testing.assert_array_equal(p[1], q[1])
    # The check can fail: altering a training surgeon changes the targets.
    y = data.y.copy()
    y[0::3] = 1 - y[0::3]
    p = make_arrays(data, 2, 2, subset="test", targets=targets)[1]
    q = make_arrays(CMData(data.x, y, 3, 3), 2, 2, subset="test", targets=targets)[1]
    assert not np.array_equal(p, q)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"targets": "dice"}, "targets"),
        ({"subset": "all"}, "subset"),
        ({"augment": "flip"}, "augment"),
        ({"batch_size": 0}, "batch_size"),
        ({"input_encoding": "raw"}, "input_encoding"),
        ({"experiment": 3}, "experiment"),
        ({"fold": 4}, "fold"),
        ({"seed": -2}, "seed"),
        ({"validation_fraction": 0.0, "subset": "val"}, "validation_fraction"),
    ],
)
def test_bad_arguments(data, kwargs, name):
    args = {"experiment": 1, "fold": 1, **kwargs}
    with pytest.raises(ValueError, match=f"argument `{name}`"):
        make_dataset(data, **args)


@pytest.mark.backends
def test_fit_on_backend(data):
    import keras_seglosses

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, SIZE, 1))
    outputs = keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    jit = keras.backend.backend() != "torch"
    model.compile(optimizer="adam", loss=keras_seglosses.RewardPenaltyDice(), jit_compile=jit)
    ds = make_dataset(data, 1, 2, batch_size=4, seed=1)
    val = make_dataset(data, 1, 2, subset="val", batch_size=4)
    history = model.fit(ds, validation_data=val, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["val_loss"]).all()


def test_legacy_targets_use_the_released_constants():
    """The released code divided by 6 (its 7 surgeons - 1) in both
    experiments, with penalty -7 (bone) and -6 (surgeon) before division."""
    d = generate(n_bones=2, n_surgeons=7, size=16, seed=0)
    for experiment, k in ((1, 7), (2, 6)):
        _, h = make_arrays(d, experiment, 1, subset="test", targets="legacy")
        want = {np.float32(-k / 6), np.float32(0)} | {np.float32(c / 6) for c in range(2, k + 1)}
        got = set(np.unique(h).tolist())
        assert got <= want and np.float32(-k / 6) in got and np.float32(k / 6) in got, got


@pytest.mark.parametrize("label", ["soft", "majority", "staple"])
def test_consensus_labels_one_pair_per_input(label):
    """`label=`: one pair per training bone, labelled with the consensus of
    the bone's training surgeries (numpy transcriptions; STAPLE is checked
    against SimpleITK in its own tests), RPMap unchanged."""
    from keras_seglosses.multirater import staple

    data = generate(n_bones=3, n_surgeons=4, size=16, seed=2)
    ds = make_dataset(data, experiment=2, fold=2, batch_size=1, augment=None, label=label)
    batches = [tuple(np.asarray(t) for t in b) for b in ds]
    split = get_split(2, 2, 3, 4)
    train, _ = split.train_val(0.1)
    bones = []
    for b, _ in train:
        if b not in bones:
            bones.append(b)
    assert len(batches) == len(bones)
    # training batches are shuffled: find each one's bone by its input
    inputs = {b: np_encode_input(data.bone_input(b)[None], "scaled")[0] for b in bones}
    found = [next(b for b in bones if np.array_equal(x[0], inputs[b])) for x, _ in batches]
    assert sorted(found) == sorted(bones)
    for (x, y), b in zip(batches, found):
        ann = data.annotations(b, split.map_surgeons[b]).astype(np.float64)
        want = {"soft": ann.mean(0), "majority": (ann.mean(0) > 0.5),
                "staple": staple(ann).probability > 0.5}[label]
        np.testing.assert_allclose(y[0, ..., 0], want.astype(np.float32), atol=1e-6)
        count = ann.sum(0)
        np.testing.assert_allclose(y[0, ..., 1], np.where(count > 0, count / count.max(), -1.0),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="`label`.*Received: label='vote'"):
        make_dataset(data, 2, 2, label="vote")
