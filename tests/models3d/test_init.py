"""`models3d.get` and what every architecture shares: a compiled training
step with RPDL, the `.keras` round trip, determinism, output range, and the
layering rule (models3d imports only keras, numpy and h5py)."""

import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_seglosses
import models3d

BACKEND = keras.backend.backend()
# Tiny models: XLA compile time grows with the number of layers, so the
# U-net and V-net use two levels; Isensee17 needs three for deep supervision.
SMALL = {
    "unet": dict(input_shape=(16, 16, 16, 1), n_base_filters=2, depth=2),
    "vnet": dict(input_shape=(16, 16, 16, 1), n_base_filters=2, depth=2),
    "isensee2017": dict(
        input_shape=(16, 16, 16, 1), n_base_filters=2, depth=3,
        n_segmentation_levels=2,
    ),
    # 32^3 so that the VAE's Dense layer after the ReLU has 8 units: with
    # 16^3 it has one, which can be inactive for the whole batch (no
    # gradient, a flaky "every weight moved" check).
    "myronenko2018": dict(input_shape=(32, 32, 32, 1), n_base_filters=2),
}
NAMES = list(SMALL)


def data(n=2, channels=1, seed=0, size=16):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, size, size, size, channels)).astype("float32")
    labels = (x[..., :1] > 0.5).astype("float32")
    m = np.where(labels > 0, 1.0, -1.0).astype("float32")
    return x, keras_seglosses.pack_targets(labels, m)


def test_get_names_and_unknown_name():
    assert sorted(models3d.ARCHITECTURES) == sorted(NAMES)
    assert models3d.get("unet", **SMALL["unet"]).name == "basic_unet"
    with pytest.raises(ValueError, match=r"`name`.*'isensee2017'.*'unet'.*unet3d"):
        models3d.get("unet3d")


@pytest.mark.backends
@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_with_rpdl(name):
    kwargs = dict(SMALL[name])
    if name == "myronenko2018":
        # A large L2 weight makes the VAE term visible in the logged loss
        # (RPDL itself is at most 1 here), proving the compiled step adds it.
        kwargs["l2_weight"] = 100.0
    keras.utils.set_random_seed(0)
    model = models3d.get(name, **kwargs)
    model.compile(
        # Plain SGD: no slot variables, so a much smaller graph to trace and
        # compile than Adam's (Myronenko18 has 156 weight tensors), and a
        # large enough rate that any nonzero gradient moves its weight.
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras_seglosses.RewardPenaltyDice(),
        # XLA on TensorFlow; JAX jits the train step by default.
        jit_compile=True if BACKEND == "tensorflow" else "auto",
    )
    # Built here, the optimizer's variables are not created inside the
    # first traced step, which TensorFlow would otherwise trace twice.
    model.optimizer.build(model.trainable_variables)
    x, y = data(size=kwargs["input_shape"][0])
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss)
    if name == "myronenko2018":
        assert loss > 1.5
    else:
        assert 0.0 <= loss <= 1.0
    changed = [
        not np.array_equal(a, np.array(b))
        for a, b in zip(before, model.trainable_weights)
    ]
    unchanged = [w.path for w, c in zip(model.trainable_weights, changed) if not c]
    assert not unchanged


@pytest.mark.backends
@pytest.mark.parametrize("name", NAMES)
def test_keras_round_trip_and_output_range(name, tmp_path):
    model = models3d.get(name, **SMALL[name])
    size = SMALL[name]["input_shape"][0]
    x, _ = data(seed=1, size=size)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    assert expected.shape == (2, size, size, size, 1)
    assert np.all((expected >= 0) & (expected <= 1))
    # No Lambda layers: safe-mode loading refuses them (and they would tie
    # the file to Python bytecode).
    assert not any(isinstance(l, keras.layers.Lambda) for l in model.layers)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects, safe mode
    got = keras.ops.convert_to_numpy(loaded(x, training=False))
    np.testing.assert_array_equal(got, expected)
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]


@pytest.mark.backends
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_set_random_seed(name):
    x, _ = data(seed=2, size=SMALL[name]["input_shape"][0])

    def run(seed):
        keras.utils.set_random_seed(seed)
        model = models3d.get(name, **SMALL[name])
        weights = [np.array(w) for w in model.weights]
        # Training mode: dropout masks and the VAE draw come from seeded
        # generators too.
        out = keras.ops.convert_to_numpy(model(x, training=True))
        losses = [keras.ops.convert_to_numpy(l) for l in model.losses]
        return weights, out, losses, [l.name for l in model.layers]

    w1, o1, l1, names1 = run(7)
    w2, o2, l2, names2 = run(7)
    w3, _, _, _ = run(8)
    # Every layer is named by the builder: a second build in the same
    # session has the same names (Keras' automatic names would count up).
    assert names1 == names2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(o1, o2)
    for a, b in zip(l1, l2):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(w1, w3))


def test_softmax_multiclass_output_sums_to_one():
    for name in NAMES:
        kwargs = dict(SMALL[name], n_labels=3, activation="softmax")
        size = kwargs["input_shape"][0]
        kwargs["input_shape"] = (size, size, size, 2)
        model = models3d.get(name, **kwargs)
        x, _ = data(n=1, channels=2, seed=3, size=size)
        y = keras.ops.convert_to_numpy(model(x, training=False))
        assert y.shape == (1, size, size, size, 3)
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_shape=(20, 16, 16, 1)), r"`input_shape`.*divisible by .*16.*\(20, 16, 16, 1\)"),
        (dict(input_shape=(16, 16, 1)), r"`input_shape`.*4 positive integers"),
        (dict(n_labels=0), r"`n_labels`.*>= 1.*n_labels=0"),
        (dict(n_base_filters=2.5), r"`n_base_filters`"),
        (dict(activation="relu"), r"`activation`.*'sigmoid', 'softmax'"),
        (dict(activation="softmax"), r"`activation`.*n_labels=1"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_invalid_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models3d.get(name, **kwargs)


@pytest.mark.parametrize("name", ["unet", "vnet", "isensee2017"])
def test_invalid_depth_and_dropout(name):
    with pytest.raises(ValueError, match=r"`depth`.*depth=1"):
        models3d.get(name, depth=1)
    with pytest.raises(ValueError, match=r"`dropout_rate`.*\[0, 1\).*dropout_rate=1"):
        models3d.get(name, dropout_rate=1)


def test_layering_imports_only_keras_numpy_h5py():
    root = Path(models3d.__file__).parent
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", re.M)
    allowed = {"keras", "numpy", "h5py", "models3d"} | set(sys.stdlib_module_names)
    for path in root.glob("*.py"):
        modules = set(pattern.findall(path.read_text()))
        assert modules <= allowed, (path.name, modules - allowed)


@pytest.fixture(scope="module")
def paper_models():
    """The four architectures at the paper's settings (64^3 x 1, 4 base
    filters, depth 5), plus the branch-free Myronenko18, built once."""
    models = {f'models3d.get("{n}")': models3d.get(n) for n in NAMES}
    models["models3d.myronenko2018(vae=False)"] = models3d.myronenko2018(vae=False)
    return models


def test_paper_settings_forward_pass(paper_models):
    # One inference pass per model at 64^3: output shape and range where the
    # small-size tests cannot see them (e.g. a level that fails to restore
    # the full resolution only at depth 5).
    x = np.random.default_rng(4).uniform(size=(1, 64, 64, 64, 1)).astype("float32")
    for call, model in paper_models.items():
        assert model.input_shape == (None, 64, 64, 64, 1), call
        y = keras.ops.convert_to_numpy(model(x, training=False))
        assert y.shape == (1, 64, 64, 64, 1), call
        assert np.all((y >= 0) & (y <= 1)) and 0 < np.std(y), call


def test_readme_parameter_table_matches_the_models(paper_models):
    readme = Path(__file__).resolve().parents[2] / "README.md"
    block = readme.read_text().split("<!-- BEGIN models3d -->")[1].split("<!-- END models3d -->")[0]
    rows = dict(re.findall(r"^\| `(.+?)` \| ([\d,]+) \|", block, re.M))
    assert set(rows) == set(paper_models)
    for call, model in paper_models.items():
        assert int(rows[call].replace(",", "")) == model.count_params(), call
