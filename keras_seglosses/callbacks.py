"""Training callbacks for the losses that need a schedule [004, Sec. 3.2]."""

import keras

from keras_seglosses._core import check_number, register

__all__ = ["BoundaryWeightSchedule"]


@register
class BoundaryWeightSchedule(keras.callbacks.Callback):
    """The boundary-loss weight schedule of Kervadec et al.

    For `L = alpha Dice + (1 - alpha) Boundary` (`DiceBoundary`), `alpha`
    starts at 1 and decreases by 0.01 after each epoch until it reaches 0.01
    [004, Sec. 3.2]: at epoch e (from 0), `alpha = max(start - step * e,
    minimum)`. The callback assigns the loss's `alpha` variable at the
    beginning of each epoch.

    TensorFlow and torch read the variable at every step. A `jax.jit`-compiled
    step would keep the value it was traced with, so on JAX the callback
    rebuilds the train function (and the test function, for validation
    losses) whenever `alpha` changes: one recompilation per epoch while the
    schedule runs.

    Args:
        loss: the loss whose `alpha` to set (a `DiceBoundary`, or any loss
            with a `keras.Variable` attribute `alpha`). Defaults to `None`:
            the model's compiled loss.
        start: float, alpha at epoch 0. Defaults to `1.0`.
        step: float >= 0, the decrease per epoch. Defaults to `0.01`.
        minimum: float, the final alpha. Defaults to `0.01`.

    Example:

    >>> from keras_seglosses import DiceBoundary
    >>> schedule = BoundaryWeightSchedule()
    >>> [round(schedule.alpha_at(e), 2) for e in (0, 1, 50, 99, 500)]
    [1.0, 0.99, 0.5, 0.01, 0.01]

    Reference:
        Ma et al., Loss odyssey [004, Sec. 3.2]; Kervadec et al., 2019.
    """

    def __init__(self, loss=None, start=1.0, step=0.01, minimum=0.01):
        super().__init__()
        self.start = float(check_number("start", start, low=0, high=1))
        self.step = float(check_number("step", step, low=0))
        self.minimum = float(check_number("minimum", minimum, low=0, high=1))
        if self.minimum > self.start:
            raise ValueError(
                "Invalid value for argument `minimum`. Expected a value <= "
                f"start={self.start}. Received: minimum={minimum!r}"
            )
        if loss is not None:
            self._check_loss(loss)
        self.loss = loss

    @staticmethod
    def _check_loss(loss):
        if not isinstance(getattr(loss, "alpha", None), keras.Variable):
            raise ValueError(
                "Invalid value for argument `loss`. Expected a loss with a "
                "`keras.Variable` attribute `alpha` (such as `DiceBoundary`). "
                f"Received: loss={loss!r}"
            )
        return loss

    def alpha_at(self, epoch):
        """The Dice weight at (0-based) `epoch`."""
        # round away float drift so that 100 epochs land exactly on 0.01
        return max(round(self.start - self.step * epoch, 10), self.minimum)

    def on_epoch_begin(self, epoch, logs=None):
        loss = self.loss if self.loss is not None else self._check_loss(self.model.loss)
        alpha = self.alpha_at(epoch)
        if abs(float(keras.ops.convert_to_numpy(loss.alpha)) - alpha) < 1e-7:
            return
        loss.alpha.assign(alpha)
        if keras.backend.backend() == "jax":
            if self.model.train_function is not None:
                self.model.make_train_function(force=True)
            if self.model.test_function is not None:
                self.model.make_test_function(force=True)

    def get_config(self):
        return {"start": self.start, "step": self.step, "minimum": self.minimum}
