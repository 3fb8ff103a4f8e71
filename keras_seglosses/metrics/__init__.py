"""Keras metrics (mean over samples) and their functional forms
(`keras_seglosses.metrics.functional`, per sample and channel).

Every metric declares its direction (higher or lower is better), so Keras'
`EarlyStopping`, `ModelCheckpoint` and `ReduceLROnPlateau` monitor it
without `mode=`.
"""

from keras_seglosses.metrics import functional
from keras_seglosses.metrics.overlap import RPD, Dice, Precision, Sensitivity, Specificity
from keras_seglosses.metrics.multirater import QUBIQ, ConsensusDice
from keras_seglosses.metrics.surface import ASD, HD95, NSD

__all__ = ["functional", "Dice", "RPD", "Sensitivity", "Specificity", "Precision", "HD95",
           "NSD", "ASD", "QUBIQ", "ConsensusDice"]
