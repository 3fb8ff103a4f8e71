"""Compiled calls for eager callers: the one module that imports a backend.

`cmseg evaluate`, notebooks and scripts call the functional metrics on
NumPy arrays, outside any compiled function. Run op by op, the surface
metrics' many small kernels cost more than the work (slower than MONAI on
TensorFlow and JAX); compiled, as inside `fit`, they are several times
faster. `eager_compiled(fn)` makes a function of `keras.ops` take the
compiled path when it is called with NumPy arrays: one compiled function
per option set (the arguments other than the two arrays), cached, which
the backend's compiler specializes per input shape (`jax.jit`;
`tf.function(jit_compile=True)`, XLA); torch runs eagerly as before.
Called with backend tensors (inside `fit`, under `jax.jit` or
`tf.function`), the function runs as written.
"""

import functools
import inspect

import keras
import numpy as np

__all__ = ["compile_function", "eager_compiled"]


def compile_function(fn):
    """`fn` compiled the way training compiles on this backend: `jax.jit`
    on JAX, `tf.function(jit_compile=True)` on TensorFlow; torch: `fn`."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


@functools.lru_cache(maxsize=64)
def _compiled(fn, options):
    return compile_function(functools.partial(fn, **dict(options)))


def eager_compiled(fn):
    """Decorate `fn(y_true, y_pred, *options)`: with NumPy `y_true` and
    `y_pred`, call its compiled form for these options (cached); otherwise
    call `fn`. The options must be hashable once lists become tuples."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(y_true, y_pred, *args, **kwargs):
        if (keras.backend.backend() == "torch"
                or not (isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray))):
            return fn(y_true, y_pred, *args, **kwargs)
        bound = signature.bind(y_true, y_pred, *args, **kwargs)
        options = tuple(sorted((k, _hashable(v)) for k, v in bound.arguments.items()
                               if k not in ("y_true", "y_pred")))
        try:
            return _compiled(fn, options)(np.asarray(y_true, "float32"),
                                          np.asarray(y_pred, "float32"))
        except (ValueError, TypeError):
            # A bad argument fails while tracing, inside the backend's
            # traceback; the plain call raises it as written, with the
            # caller's values.
            return fn(y_true, y_pred, *args, **kwargs)

    wrapper.uncompiled = fn
    return wrapper
