"""Custom TFX components of the Mask R-CNN TFX product.

- :mod:`maskrcnn_tfx.components.annotation_checks`: per-record annotation checks (pure Python, no TFX needed).
- :mod:`maskrcnn_tfx.components.annotation_validator`: the ``AnnotationValidator`` component that runs them over a
  pipeline's examples with Beam.
"""
import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)

_LAZY = {"AnnotationValidator": "maskrcnn_tfx.components.annotation_validator",
         "InstanceAnomalies": "maskrcnn_tfx.components.annotation_validator"}


def __getattr__(name: str):
    # Lazy, so that using the pure checks does not import TFX and Beam.
    if name in _LAZY:
        import importlib  # pylint: disable=g-import-not-at-top

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
