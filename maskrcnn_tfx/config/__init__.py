"""The product's one configuration: one schema, one loader, one validator, one error type.

- :mod:`maskrcnn_tfx.config.schema`: every setting (the pipeline's sections and the Trainer's), with defaults.
- :mod:`maskrcnn_tfx.config.loader`: YAML files, flags, presets (``presets/*.yaml``, data) and the TFX
  Trainer's ``custom_config`` into the schema.
- :mod:`maskrcnn_tfx.config.validation`: every check, run once where a configuration enters.

``maskrcnn-tfx config show`` prints a run's merged, validated configuration. docs/architecture.md
("Configuration") describes the contract between this package, the pipeline and the Trainer.
"""
from maskrcnn_tfx.config.loader import from_dict
from maskrcnn_tfx.config.loader import from_trainer_custom_config
from maskrcnn_tfx.config.loader import load
from maskrcnn_tfx.config.loader import load_trainer_config
from maskrcnn_tfx.config.loader import preset_names
from maskrcnn_tfx.config.loader import to_dict
from maskrcnn_tfx.config.loader import to_yaml
from maskrcnn_tfx.config.loader import trainer_custom_config
from maskrcnn_tfx.config.loader import trainer_from_dict
from maskrcnn_tfx.config.schema import ConfigError
from maskrcnn_tfx.config.schema import PipelineConfig
from maskrcnn_tfx.config.schema import TrainerConfig
from maskrcnn_tfx.config.validation import check_replicas

__all__ = [
    "ConfigError", "PipelineConfig", "TrainerConfig", "check_replicas", "from_dict", "from_trainer_custom_config",
    "load", "load_trainer_config", "preset_names", "to_dict", "to_yaml", "trainer_custom_config",
    "trainer_from_dict",
]
