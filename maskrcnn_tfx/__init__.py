"""Mask R-CNN instance segmentation as a production TFX pipeline.

Importing this package selects the Keras 2 implementation (``tf_keras``) that TF Model Garden and TFMA need.
It must happen before TensorFlow resolves ``tf.keras``; every entry point of the project imports this package
first, so a user never has to set ``TF_USE_LEGACY_KERAS`` by hand.
"""
import os
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter hides the messages users need; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# google-api-core (pulled in by TFX) warns on every start that Python 3.10 is old; the pinned stack needs it.
warnings.filterwarnings("ignore", message="You are using a non-supported Python version", category=FutureWarning)

__version__ = "0.1.0"
