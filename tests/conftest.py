"""Shared test fixtures.

The suite runs whole under KERAS_BACKEND=tensorflow; tests marked
`backends` run again under jax and torch (see the Makefile).
"""

import os

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


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


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')})"
