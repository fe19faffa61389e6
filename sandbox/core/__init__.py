"""The core: config schema, errors, data and partitioners, model specs, privacy maths,
the wire protocol and the results format.

The bottom layer: it imports no other part of the project, and no torch, TensorFlow,
Keras, Flower or Optuna at module import time.
"""
