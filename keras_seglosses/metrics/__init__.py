"""Keras metrics (mean over samples) and their functional forms
(`keras_seglosses.metrics.functional`, per sample and channel)."""

from keras_seglosses.metrics import functional
from keras_seglosses.metrics.overlap import RPD, Dice
from keras_seglosses.metrics.surface import ASD, HD95, NSD

__all__ = ["functional", "Dice", "RPD"]
__all__ += ["HD95", "NSD", "ASD"]
