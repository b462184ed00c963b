"""The pipeline's component ids: the names the metadata store records and a run prints. ``pipelines/pipeline.py``
gives each component its id from here; the run summary, the report and the benchmarks read them from here.

No TFX import, so the report and the run output can use it cheaply.
"""
EXAMPLE_GEN = "ImportExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
IMPORT_SCHEMA_GEN = "ImportSchemaGen"  # instead of SchemaGen, with a curated schema (data.schema_path)
EXAMPLE_VALIDATOR = "ExampleValidator"
ANOMALIES_GATE = "AnomaliesGate"
ANNOTATION_VALIDATOR = "AnnotationValidator"
TRANSFORM = "Transform"
TRAINER = "Trainer"
RESOLVER = "latest_blessed_model_resolver"  # the model to beat: the latest blessed one
EVALUATOR = "Evaluator"
INFRA_VALIDATOR = "InfraValidator"
PUSHER = "Pusher"

# Pipeline order (the schema step is one or the other).
IN_ORDER = (EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, IMPORT_SCHEMA_GEN, EXAMPLE_VALIDATOR, ANOMALIES_GATE,
            ANNOTATION_VALIDATOR, TRANSFORM, TRAINER, RESOLVER, EVALUATOR, INFRA_VALIDATOR, PUSHER)
