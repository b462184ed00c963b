"""``maskrcnn-tfx config show``: the merged, validated configuration a run would use, as YAML on stdout."""
import os

import pytest
import yaml

from maskrcnn_tfx import cli
from maskrcnn_tfx.testing.data import shapes_tfrecords


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> str:
    return shapes_tfrecords(str(tmp_path_factory.mktemp("shapes_data")), num_images=6, image_size=64, seed=3,
                            eval_fraction=0.34)


def _show(capsys, *argv):
    code = cli.main(["config", "show", *argv])
    out = capsys.readouterr()
    return code, out


def test_file_then_flags_then_the_preset_resolved_for_the_trainer(tmp_path, capsys, shapes_data):
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump({
        "pipeline_root": str(tmp_path / "root"), "data": {"root": shapes_data},
        "trainer": {"train": {"train_steps": 40, "batch_size": 2}, "model": {"input_size": 96}},
        "evaluation": {"min_mask_ap": 0.2}}))
    code, out = _show(capsys, "--config", str(config_file), "--train-steps", "70", "--min-box-ap", "0.1")
    assert code == 0, out.err
    shown = yaml.safe_load(out.out)
    # Flags over the file over the defaults, with the derived paths filled in.
    assert shown["evaluation"]["min_mask_ap"] == 0.2 and shown["evaluation"]["min_box_ap"] == 0.1
    assert shown["metadata_path"] == str(tmp_path / "root" / "metadata.sqlite")
    assert shown["data"]["label_map_path"] == os.path.join(shapes_data, "label_map.json")
    # What the Trainer trains with: the tiny preset, the file's fields, the flag's steps, no own evaluation.
    trainer = shown["trainer"]
    assert trainer["preset"] == "tiny" and trainer["train"]["train_steps"] == 70
    assert trainer["train"]["batch_size"] == 2 and trainer["train"]["eval_steps"] == 0
    assert trainer["model"]["input_size"] == 96 and trainer["model"]["backbone"] == "resnet18"
    # Only YAML (and its comment lines) on stdout, and a configuration file `run --config` takes as it is.
    assert all(line.startswith(("#", " ", "-")) or line.split(":")[0] in shown for line in out.out.splitlines())
    again = tmp_path / "resolved.yaml"
    again.write_text(out.out)
    code, out = _show(capsys, "--config", str(again))
    assert code == 0, out.err
    assert yaml.safe_load(out.out) == shown


def test_an_invalid_configuration_exits_2_naming_the_field(tmp_path, capsys, shapes_data):
    code, out = _show(capsys, "--data", shapes_data, "--pipeline-root", str(tmp_path), "--preset", "nope")
    assert code == 2 and "unknown preset 'nope'" in out.err and not out.out
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  train:\n    batch_sise: 2\n")
    code, out = _show(capsys, "--config", str(bad), "--data", shapes_data)
    assert code == 2 and "unknown field 'trainer.train.batch_sise'" in out.err and not out.out
    # A file of an older release: refused, with the section written the way it is written now.
    older = tmp_path / "older.yaml"
    older.write_text("trainer:\n  train_steps: 40\n  overrides:\n    train:\n      batch_size: 2\n")
    code, out = _show(capsys, "--config", str(older), "--data", shapes_data)
    assert code == 2 and not out.out
    assert "trainer.overrides, trainer.train_steps: fields of an older release" in out.err
    assert "train:\n          batch_size: 2\n          train_steps: 40" in out.err, out.err
