"""Keras metrics (mean over samples) and their functional forms
(`keras_seglosses.metrics.functional`, per sample and channel)."""

from keras_seglosses.metrics import functional
from keras_seglosses.metrics.overlap import RPD, Dice

__all__ = ["functional", "Dice", "RPD"]
