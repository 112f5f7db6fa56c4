"""Inference on model bundles: `Classifier` (LiteRT or compiled Keras) and TFLite conversion."""

from tl_perception.inference.classifier import BACKENDS, Classifier
from tl_perception.inference.convert import keras_to_tflite

__all__ = ["BACKENDS", "Classifier", "keras_to_tflite"]
