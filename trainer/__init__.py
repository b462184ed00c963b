"""trainer of the Mask R-CNN TFX product."""
import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
