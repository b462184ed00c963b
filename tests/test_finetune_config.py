"""Fine-tuning settings: ``maskrcnn-tfx run --init-checkpoint/--init-checkpoint-modules`` -> the pipeline
configuration -> the Trainer's ``custom_config``, and the checks made before anything runs (fast: no model)."""
import argparse
import os

import pytest

from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.pipelines import run_cli
from maskrcnn_tfx.trainer import experiment as experiment_lib
from maskrcnn_tfx.trainer import model as model_lib


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    LabelMap.from_pairs([(1, "cat"), (2, "dog")]).save(str(root / "label_map.json"))
    return root


def _checkpoint(folder, step=5):
    """Empty files with a checkpoint's names (the pipeline only checks that they exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ckpt-{step}.index").write_bytes(b"")
    (folder / f"ckpt-{step}.data-00000-of-00001").write_bytes(b"")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\n')
    return folder / f"ckpt-{step}"


def _parse(*argv):
    parser = argparse.ArgumentParser()
    run_cli.add_arguments(parser)
    return run_cli.config_from_args(parser.parse_args(list(argv)))


def test_flags_reach_the_trainer_custom_config_with_an_absolute_path(data_dir, tmp_path, monkeypatch):
    prefix = _checkpoint(tmp_path / "pretrained")
    monkeypatch.chdir(tmp_path)
    config = _parse("--data", str(data_dir), "--preset", "finetune", "--init-checkpoint", "pretrained/ckpt-5",
                    "--init-checkpoint-modules", "backbone_fpn")
    assert config.trainer.train.init_checkpoint == str(prefix)
    custom = config_lib.trainer_custom_config(config)
    assert custom["trainer"]["preset"] == "finetune"
    assert custom["trainer"]["train"]["init_checkpoint"] == str(prefix)
    assert custom["trainer"]["train"]["init_checkpoint_modules"] == "backbone_fpn"
    # What the Trainer's run_fn builds from it (trainer/task.py), and hands to Model Garden's task.
    trainer, _ = config_lib.from_trainer_custom_config(custom)
    experiment = experiment_lib.to_experiment_config(trainer, LabelMap.load(config.label_map_path))
    assert (experiment.task.init_checkpoint, experiment.task.init_checkpoint_modules) == (str(prefix),
                                                                                           "backbone_fpn")


def test_a_folder_an_index_file_and_the_preset_default_mode(data_dir, tmp_path):
    folder = tmp_path / "model_run"
    prefix = _checkpoint(folder, step=12)
    config = _parse("--data", str(data_dir), "--preset", "finetune", "--init-checkpoint", str(folder))
    assert config.trainer.train.init_checkpoint == str(folder)  # The Trainer reads the folder's latest.
    assert config.trainer.train.init_checkpoint_modules == "all_but_class_layers"
    config = _parse("--data", str(data_dir), "--init-checkpoint", f"{prefix}.index")
    assert config.trainer.train.init_checkpoint == str(prefix)
    assert config.trainer.train.init_checkpoint_modules == "backbone"  # tiny's own default: only the backbone.


def test_a_saved_model_folder_is_accepted(data_dir, tmp_path):
    saved = tmp_path / "serving" / "1700000000"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"")
    config = _parse("--data", str(data_dir), "--init-checkpoint", str(saved), "--init-checkpoint-modules", "all")
    assert config_lib.trainer_custom_config(config)["trainer"]["train"]["init_checkpoint_modules"] == "all"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nothing" / "ckpt-1", r"nothing/ckpt-1 does not exist: give a checkpoint prefix"),
    (lambda p: (p / "empty").mkdir() or p / "empty", r"empty is a folder without checkpoints"),
    (lambda p: (_checkpoint(p / "gone"), os.remove(p / "gone" / "ckpt-5.index"))[0].parent,
     r"the latest checkpoint of .*gone: .*gone/ckpt-5 does not exist"),
    (lambda p: (_checkpoint(p / "nodata"), os.remove(p / "nodata" / "ckpt-5.data-00000-of-00001"))[0],
     r"nodata/ckpt-5 has an .index file but no .data files"),
], ids=["missing-prefix", "empty-folder", "folder-latest-missing", "index-without-data"])
def test_a_checkpoint_that_is_not_there_fails_validation_by_name(data_dir, tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=message):
        _parse("--data", str(data_dir), "--init-checkpoint", str(path))


def test_a_checkpoint_named_in_a_configuration_file_is_checked_too(data_dir, tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"trainer.train.init_checkpoint: .*missing/ckpt-3"):
        config_lib.from_dict({"data": {"root": str(data_dir)},
                              "trainer": {"train": {"init_checkpoint": str(tmp_path / "missing" / "ckpt-3")}}})


def test_an_unknown_mode_is_refused(data_dir, tmp_path):
    prefix = _checkpoint(tmp_path / "p")
    with pytest.raises(SystemExit):
        _parse("--data", str(data_dir), "--init-checkpoint", str(prefix), "--init-checkpoint-modules", "heads")
    with pytest.raises(config_lib.ConfigError, match=r"trainer.train.init_checkpoint_modules must be one of .* "
                                                      r"not 'decoder'"):
        config_lib.from_dict({"data": {"root": str(data_dir)},
                              "trainer": {"train": {"init_checkpoint": str(prefix),
                                                    "init_checkpoint_modules": "decoder"}}})


def test_every_mode_the_configuration_accepts_is_handled():
    assert set(model_lib.INIT_PARTS) | {model_lib.ALL_BUT_CLASS_LAYERS, "all"} == set(model_lib.INIT_MODES)


def test_finetune_preset_is_the_tiny_model_with_fine_tuning_settings():
    tiny, finetune = config_lib.load_trainer_config("tiny"), config_lib.load_trainer_config("finetune")
    assert finetune.model == tiny.model  # A tiny run's checkpoint fits it.
    assert finetune.train.init_checkpoint_modules == "all_but_class_layers"
    assert finetune.train.learning_rate.base < tiny.train.learning_rate.base
    assert finetune.train.learning_rate.warmup_steps < tiny.train.learning_rate.warmup_steps
    assert finetune.train.init_checkpoint == ""  # Given by the user; nothing is downloaded.
