"""Serving the pushed Mask R-CNN: TF Serving's configuration, a client, and a TF Serving-compatible local server.

- ``model_config``, ``config_cli``: TF Serving's ``models.config`` and batching parameters (``serving-config``);
  ``docker-compose.yml`` and ``k8s/`` run TF Serving itself on the Pusher's base directory.
- ``client``, ``detections``, ``predict_cli``: REST and gRPC clients, typed detections with full-image masks,
  COCO results JSON and overlays (``predict``).
- ``local_server``, ``model_store``, ``predictor``, ``rest_server``, ``rest_codec``, ``grpc_server``,
  ``serve_cli``: the local server (``serve``).
"""
import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
