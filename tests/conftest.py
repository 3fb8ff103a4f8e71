"""Shared test fixtures.

The suite runs whole under KERAS_BACKEND=tensorflow; tests marked
`backends` run again under jax and torch (see the Makefile).
"""

import os
import sys

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

# Test modules share reference implementations through `tests/_references.py`;
# under `--import-mode=importlib` pytest puts no test folder on `sys.path`.
_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)


def compile_fn(fn):
    """Compile `fn` the way training does on this backend: `jax.jit` on JAX,
    `tf.function(jit_compile=True)` (XLA) on TensorFlow; torch runs eagerly.
    Torch's eager mode hides graph bugs, hence this on the other two."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    return fn


@pytest.fixture
def jit():
    return compile_fn


def compiled_gradient(fn):
    """`x -> d fn(x) / dx` (numpy, float32) for a scalar-valued `fn` of one
    array, compiled as `compile_fn` does (XLA on TensorFlow, `jax.jit`)."""
    if BACKEND == "jax":
        import jax

        grad = jax.jit(jax.grad(fn))
        return lambda x: np.asarray(grad(np.asarray(x, np.float32)))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True, reduce_retracing=True)
        def grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = fn(x)
            return tape.gradient(out, x)

        return lambda x: grad(tf.constant(x, tf.float32)).numpy()
    import torch

    def grad(x):
        t = torch.tensor(np.asarray(x, np.float32), requires_grad=True)
        fn(t).backward()
        return t.grad.numpy()

    return grad


@pytest.fixture
def autodiff():
    """`autodiff(fn)(x)`: the compiled gradient of a scalar loss (see
    `compiled_gradient`)."""
    return compiled_gradient


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Tests that change the global dtype policy must not leak it."""
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _no_op_determinism_leak():
    """In-process deterministic training (`cmseg train --deterministic`, the
    demo) turns on TensorFlow's op determinism for the whole process; later
    tests must not inherit it (XLA then refuses, e.g., max-pool gradients)."""
    yield
    if "tensorflow" in sys.modules:
        # not in TensorFlow's public API (only `enable_op_determinism` is)
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')})"
