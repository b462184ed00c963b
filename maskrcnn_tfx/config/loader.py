"""Reading the configuration: YAML files, flags, presets and the Trainer's ``custom_config``, into the schema.

One reader for every way a configuration enters:

- :func:`load` / :func:`from_dict`: a run's :class:`~maskrcnn_tfx.config.schema.PipelineConfig` (a YAML file,
  then the command line's changes), validated;
- :func:`load_trainer_config`: a :class:`~maskrcnn_tfx.config.schema.TrainerConfig` alone (training outside
  TFX, tests, benchmarks), validated;
- :func:`trainer_custom_config` / :func:`from_trainer_custom_config`: the two ends of the TFX Trainer's
  ``custom_config`` (docs/architecture.md, "Configuration").

A trainer section starts from its preset's YAML (``maskrcnn_tfx/config/presets``) and the fields given beside
``preset`` replace the preset's. Unknown fields and wrong types are errors naming the field; fields of older
releases (``trainer.overrides``, ``trainer.train_steps``, ...) are errors that show the section rewritten.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from maskrcnn_tfx import files
from maskrcnn_tfx.config import schema
from maskrcnn_tfx.config import validation
from maskrcnn_tfx.config.schema import ConfigError, PipelineConfig, TrainerConfig

PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
# The TFX Trainer's custom_config: the trainer section, resolved, and the label map the model's classes come from.
CUSTOM_CONFIG_TRAINER = "trainer"
CUSTOM_CONFIG_LABEL_MAP = "label_map_path"
# custom_config keys that TFX's Google Cloud (Vertex AI) Trainer extension adds for itself.
_PLATFORM_KEY_PREFIX = "ai_platform_"
# Trainer fields of releases before the one configuration, and where each went.
_MOVED_TRAINER_FIELDS = {
    "train_steps": "train.train_steps",
    "eval_steps": "train.eval_steps",
    "init_checkpoint": "train.init_checkpoint",
    "init_checkpoint_modules": "train.init_checkpoint_modules",
}


# ------------------------------------------------------------------------------------------------ a pipeline

def load(path: Optional[str] = None, changes: Optional[Mapping[str, Any]] = None, *,
         check_files: Optional[bool] = None) -> PipelineConfig:
    """A run's validated configuration: the defaults, then the YAML file at ``path``, then ``changes``.

    ``changes`` (e.g. the command line's flags) is a nested dict merged into the file's values before the
    trainer section is resolved, so a preset given there applies under the file's trainer fields.
    ``check_files`` (default: unless the runner is kubeflow) also checks that local data and checkpoints exist.
    """
    values = read_yaml(path) if path else {}
    return from_dict(merged(values, changes or {}), source=path or "configuration", check_files=check_files)


def from_dict(values: Mapping[str, Any], *, source: str = "configuration",
              check_files: Optional[bool] = None) -> PipelineConfig:
    """A validated configuration from nested dicts (a YAML file's body)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of configuration fields, got {type(values).__name__}")
    values = dict(values)
    problems: List[str] = []
    # An empty section (`trainer:` alone in YAML) is the preset's defaults.
    values["trainer"] = _resolved_trainer(values.get("trainer") or {}, "trainer.", problems)
    config = _build(PipelineConfig, values, "", problems) if not problems else None
    if problems:
        raise ConfigError(validation.message(source, problems))
    if check_files is None:
        check_files = config.runner != "kubeflow"
    return validation.validate(config, check_files=check_files, source=source)


# ----------------------------------------------------------------------------------------------- the trainer

def load_trainer_config(preset: Optional[str] = None,
                        changes: Union[None, Mapping[str, Any], Sequence[Mapping[str, Any]]] = None
                        ) -> TrainerConfig:
    """A validated trainer section: ``preset`` (default: the one named in ``changes``, else ``tiny``), then
    each of ``changes`` in order (nested dicts of trainer fields)."""
    change_list = [changes] if isinstance(changes, Mapping) else list(changes or [])
    values: Dict[str, Any] = {"preset": preset} if preset else {}
    for change in change_list:
        values = merged(values, change)
    return trainer_from_dict(values)


def trainer_from_dict(values: Mapping[str, Any], *, source: str = "trainer configuration",
                      prefix: str = "") -> TrainerConfig:
    """A validated trainer section from a nested dict that may name its ``preset``."""
    problems: List[str] = []
    resolved = _resolved_trainer(values, prefix, problems)
    trainer = _build(TrainerConfig, resolved, prefix, problems) if not problems else None
    if problems:
        raise ConfigError(validation.message(source, problems))
    return validation.validate_trainer(trainer, source=source, prefix=prefix)


def trainer_custom_config(config: PipelineConfig) -> Dict[str, Any]:
    """The TFX Trainer's ``custom_config`` for a run: its resolved trainer section and its label map.

    The whole section is written, not the preset's name, so a compiled pipeline trains what ``maskrcnn-tfx
    config show`` printed even if the preset files change before it runs.
    """
    return {CUSTOM_CONFIG_TRAINER: to_dict(config.trainer), CUSTOM_CONFIG_LABEL_MAP: config.label_map_path}


def from_trainer_custom_config(custom_config: Optional[Mapping[str, Any]]) -> Tuple[TrainerConfig, str]:
    """The validated trainer section and the label map path held by a TFX Trainer's ``custom_config``."""
    values = {k: v for k, v in (custom_config or {}).items() if not str(k).startswith(_PLATFORM_KEY_PREFIX)}
    unknown = sorted(set(values) - {CUSTOM_CONFIG_TRAINER, CUSTOM_CONFIG_LABEL_MAP})
    if unknown or not isinstance(values.get(CUSTOM_CONFIG_TRAINER), Mapping):
        raise ConfigError(
            f"the Trainer's custom_config must be {{{CUSTOM_CONFIG_TRAINER!r}: <trainer section>, "
            f"{CUSTOM_CONFIG_LABEL_MAP!r}: <label map path>}}, as maskrcnn_tfx.config.trainer_custom_config "
            f"writes it; got the keys {sorted(values)}. A pipeline compiled by an older release passes the "
            f"trainer fields at the top level: compile it again (maskrcnn-tfx run --runner kubeflow)")
    label_map_path = values.get(CUSTOM_CONFIG_LABEL_MAP) or ""
    if not isinstance(label_map_path, str):
        raise ConfigError(f"custom_config {CUSTOM_CONFIG_LABEL_MAP!r} must be a path, got {label_map_path!r}")
    trainer = trainer_from_dict(values[CUSTOM_CONFIG_TRAINER], source="the Trainer's custom_config",
                                prefix="trainer.")
    return trainer, label_map_path


# ------------------------------------------------------------------------------------------------- presets

def preset_names() -> List[str]:
    return sorted(f[:-len(".yaml")] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def preset_path(name_or_path: str) -> str:
    """A preset's YAML file: a name from ``maskrcnn_tfx/config/presets``, or a path (local or gs://...)."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or files.is_remote(name_or_path):
        return name_or_path
    path = os.path.join(PRESETS_DIR, name_or_path + ".yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown preset {name_or_path!r}; presets: {', '.join(preset_names())}, or the path "
                          f"of a preset YAML file")
    return path


# ---------------------------------------------------------------------------------------------- plain data

def read_yaml(path: str) -> Dict[str, Any]:
    """A YAML file's mapping (local or gs://...); errors name the file."""
    try:
        text = files.read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the configuration file {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    except Exception as e:  # pylint: disable=broad-except  (tf.io.gfile's NotFoundError and kin)
        raise ConfigError(f"cannot read the configuration file {path}: {e}") from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration fields, got {type(body).__name__}")
    return body


def to_dict(config: Any) -> Dict[str, Any]:
    """A configuration (or one of its sections) as plain nested dicts."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    """A configuration (or one of its sections) as YAML, in the schema's field order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> Dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` merged in (mappings merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return out


# ---------------------------------------------------------------------------------------------------------

def _resolved_trainer(values: Any, prefix: str, problems: List[str]) -> Dict[str, Any]:
    """The trainer section's values over its preset's (as plain data), or {} with the problems recorded."""
    if not isinstance(values, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'the trainer section'} must be a mapping, got {values!r}")
        return {}
    values = dict(values)
    moved = [key for key in ("overrides", *_MOVED_TRAINER_FIELDS, "label_map_path") if key in values]
    if moved:
        problems.append(_moved_fields_message(values, moved, prefix))
        return {}
    preset = values.get("preset") or schema.DEFAULT_PRESET
    if not isinstance(preset, str):
        problems.append(f"{prefix}preset must be a preset name or a YAML file, got {preset!r}")
        return {}
    if _complete(TrainerConfig, values):
        # A resolved section (the Trainer's custom_config, `config show`'s output) has nothing left for its
        # preset to fill: it is not read again, so a preset file need not be where the section is read.
        return values
    try:
        path = preset_path(preset)
        body = read_yaml(path)
    except ConfigError as e:
        problems.append(f"{prefix}preset: {e}")
        return {}
    if "preset" in body:
        problems.append(f"{prefix}preset: the preset file {path} names a preset itself; presets do not chain")
        return {}
    # A preset file is recorded by its absolute path: the section may be read again from elsewhere.
    named = preset if files.is_remote(preset) or path != preset else os.path.abspath(preset)
    return merged(body, dict(values, preset=named))


def _complete(cls, values: Any) -> bool:
    """Whether ``values`` gives every field of ``cls``, nested sections included."""
    if not isinstance(values, Mapping):
        return False
    types = _field_types(cls)
    return all(name in values and (not dataclasses.is_dataclass(tp) or _complete(tp, values[name]))
               for name, tp in types.items())


def _moved_fields_message(values: Dict[str, Any], moved: List[str], prefix: str) -> str:
    """The error for fields of older releases, with the section as it is written now."""
    now = {k: v for k, v in values.items() if k not in moved}
    overrides = values.get("overrides")
    if isinstance(overrides, Mapping):
        overrides = dict(overrides)
        overrides.pop("label_map_path", None)
        if "preset" in overrides:
            now.setdefault("preset", overrides.pop("preset"))
        now = merged(now, overrides)
    for key, target in _MOVED_TRAINER_FIELDS.items():
        section, field = target.split(".")
        # train_steps 0 meant the preset's; eval_steps 0 meant the overrides' value when they had one.
        if key not in values or (key in ("train_steps", "eval_steps") and values[key] == 0
                                 and (key == "train_steps" or field in now.get(section, {}))):
            continue
        now = merged(now, {section: {field: values[key]}})
    notes = []
    if "label_map_path" in values:
        notes.append("the label map is data.label_map_path (default: <data.root>/label_map.json)")
    name = prefix.rstrip(".") or "trainer"
    rewritten = yaml.safe_dump({name: now} if prefix else now, sort_keys=False, default_flow_style=False)
    return (f"{', '.join(prefix + k for k in moved)}: fields of an older release. Every trainer field is now "
            f"written directly in the trainer section, beside its preset (train_steps, eval_steps and "
            f"init_checkpoint* under train:){'; ' + '; '.join(notes) if notes else ''}. Write it as:\n"
            + "".join(f"      {line}\n" for line in rewritten.splitlines()).rstrip())


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls, vars(schema))
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, values: Any, prefix: str, problems: List[str]):
    """``cls`` from nested dicts, strictly: unknown fields and wrong types are recorded by their dotted name."""
    if not isinstance(values, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'the configuration'} must be a mapping, got {values!r}")
        return cls()
    types = _field_types(cls)
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in types:
            problems.append(f"unknown field {name!r} (known: {', '.join(sorted(types))})")
            continue
        tp = types[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, {} if value is None else value, f"{name}.", problems)
            continue
        coerced = _coerce(tp, value)
        if coerced is _INVALID:
            problems.append(f"{name} must be {_type_name(tp)}, got {value!r}")
        else:
            kwargs[key] = coerced
    return cls(**kwargs)


_INVALID = object()


def _coerce(tp, value):
    """``value`` as the field type ``tp``, or ``_INVALID``. YAML 1.1 reads ``1e-4`` as a string."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value)
    if value is None:
        return _INVALID
    if origin in (list, List):
        if isinstance(value, str) and args[0] is str:
            value = value.split()  # a list of strings may be written as one space-separated string
        if not isinstance(value, (list, tuple)):
            return _INVALID
        items = [_coerce(args[0], v) for v in value]
        return _INVALID if any(i is _INVALID for i in items) else items
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            return _INVALID
        items = {str(k): _coerce(args[1], v) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in items.values()) else items
    if tp is bool:
        return value if isinstance(value, bool) else _INVALID
    if tp is int:
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else _INVALID
    if tp is float:
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if tp is str:
        return value if isinstance(value, str) else _INVALID
    return value


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, List):
        return f"a list of {_type_name(args[0])}"
    if origin in (dict, Dict):
        return "a mapping"
    if origin is Union:
        return " or ".join([_type_name(a) for a in args if a is not type(None)] + ["null"])
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
