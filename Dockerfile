# The image every component of the Kubeflow V2 / Vertex AI pipeline runs in:
#   docker build -t gcr.io/PROJECT/maskrcnn-tfx:0.1.0 .
#   maskrcnn-tfx run --runner kubeflow --config pipeline.yaml --image gcr.io/PROJECT/maskrcnn-tfx:0.1.0
# TFX's image already holds TFX 1.16 and its entrypoint (the KFP v2 container launcher), which is kept.
FROM tensorflow/tfx:1.16.0

WORKDIR /pipeline

# Dependencies first, from the pinned constraints, so code changes do not reinstall them.
COPY requirements/constraints.txt requirements/constraints.txt
COPY setup.py pyproject.toml README.md ./
RUN mkdir -p maskrcnn_tfx && touch maskrcnn_tfx/__init__.py \
    && python -m pip install --no-cache-dir -c requirements/constraints.txt . \
    && python -m pip uninstall -y maskrcnn-tfx

# The project itself: configuration (presets), custom components, trainer (run_fn, preprocessing_fn), Evaluator metrics.
COPY maskrcnn_tfx maskrcnn_tfx
COPY components components
COPY pipelines pipelines
COPY trainer trainer
COPY serving serving
RUN python -m pip install --no-cache-dir --no-deps -c requirements/constraints.txt -e .

# Keras 2 for Model Garden and TFMA (maskrcnn_tfx sets it too; components may import TensorFlow first).
# PYTHONPATH: the KFP launcher imports the AnnotationValidator's artifact type by its schema title,
# components.InstanceAnomalies (a title must be <namespace>.<Name>), so /pipeline/components is importable too.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONPATH=/pipeline
