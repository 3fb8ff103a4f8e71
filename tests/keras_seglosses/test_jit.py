"""`keras_seglosses._jit`: eager NumPy calls of the surface metrics take
the compiled path, once per option set, with the same values."""

import keras
import numpy as np
import pytest

from keras_seglosses import _jit
from keras_seglosses.metrics import functional


def _masks(rng, shape=(3, 10, 12, 9, 1)):
    y = (rng.random(shape) > 0.6).astype("float32")
    p = (rng.random(shape) > 0.5).astype("float32")
    return y, p


@pytest.mark.backends
def test_numpy_calls_compile_once_per_option_set_and_match_the_plain_function(rng):
    y, p = _masks(rng)
    _jit._compiled.cache_clear()
    for fn, kwargs in ((functional.hd95, dict(spacing=[1.0, 2.0, 0.5])),
                       (functional.nsd, dict(tolerance=1.5)),
                       (functional.asd, dict(convention="pooled", directed=False))):
        plain = keras.ops.convert_to_numpy(fn.uncompiled(y, p, **kwargs))
        for _ in range(2):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(fn(y, p, **kwargs)), plain,
                                       rtol=1e-6)
    if keras.backend.backend() == "torch":  # eager anyway: nothing to compile
        assert _jit._compiled.cache_info().currsize == 0
        return
    info = _jit._compiled.cache_info()
    assert (info.misses, info.hits) == (3, 3)
    functional.hd95(y, p, spacing=(1.0, 2.0, 0.5))  # the same options, spelled as a tuple
    functional.hd95(y, p, (1.0, 2.0, 0.5))  # and positionally
    assert _jit._compiled.cache_info().misses == 3
    functional.hd95(y, p, spacing=(1.0, 1.0, 1.0))
    assert _jit._compiled.cache_info().misses == 4


@pytest.mark.backends
def test_tensor_inputs_and_traced_calls_run_the_function_as_written(rng, jit):
    y, p = _masks(rng)
    _jit._compiled.cache_clear()
    expected = keras.ops.convert_to_numpy(functional.hd95.uncompiled(y, p))
    t = keras.ops.convert_to_tensor
    np.testing.assert_allclose(keras.ops.convert_to_numpy(functional.hd95(t(y), t(p))), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(jit(lambda a, b: functional.hd95(a, b))(y, p)), expected,
        rtol=1e-6)
    assert _jit._compiled.cache_info().currsize == 0


def test_bad_options_still_raise_clearly(rng):
    y, p = _masks(rng)
    with pytest.raises(ValueError, match="`convention`") as error:
        functional.hd95(y, p, convention="median")
    # the caller's value, not the backend's traced copy or traceback
    with pytest.raises(ValueError, match=r"Received: spacing=\[1.0, 1.0\]$") as error:
        functional.nsd(y, p, spacing=[1.0, 1.0])
    assert "in user code" not in str(error.value)
