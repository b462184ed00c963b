"""The report: an HTML dashboard of every pipeline run, built from the run's artifacts as the metadata store
(MLMD) names them, and an index of all runs.

``maskrcnn-tfx report --pipeline-root DIR [--run ID] --output DIR`` writes ``OUTPUT/index.html`` (every run of the
pipeline with its headline metrics and blessing, and mask AP across runs) and ``OUTPUT/runs/<run>/index.html``
(one run: metrics, per-class AP, precision-recall curves, slices, the blessing with its thresholds and the change
against the baseline, training curves, data statistics and anomalies, and a gallery of predictions beside the
ground truth). Pages open from disk with no network: inline CSS, charts and images as files beside the HTML.

One concern per module:

- :mod:`.runs`: which runs exist and where each run's artifacts are (MLMD, through ``maskrcnn_tfx.pipelines.outputs``);
- :mod:`.evaluation`: the Evaluator's TFMA result: metrics by slice and model, curves, thresholds, blessing;
- :mod:`.training`: the Trainer's TensorBoard scalars;
- :mod:`.data`: the statistics, schema anomalies and annotation reports of the validators;
- :mod:`.gallery`: the evaluated model run on eval examples, masks drawn beside the ground truth;
- :mod:`.charts`: the charts (matplotlib, SVG files);
- :mod:`.html`: the pages (Jinja2 templates in ``templates/``, autoescaped);
- :mod:`.build`: puts them together; :mod:`.cli` is the ``report`` subcommand.

Importing this package loads nothing heavy, so ``maskrcnn-tfx report --help`` answers without TensorFlow.
"""
