"""The built wheel installs one namespace, ``maskrcnn_tfx``, with its data files (docs/architecture.md)."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # A copy of what setup.py packages (symlinks kept), so the build leaves no build/ or egg-info in the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    for name in ("maskrcnn_tfx", "pipelines", "components", "trainer", "serving"):
        shutil.copytree(os.path.join(REPO, name), source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: the venv's setuptools, no download (CI may be offline for the build backend).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, text=True)
    wheels = [name for name in os.listdir(out) if name.endswith(".whl")]
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(out / wheels[0]) as whl:
        return whl.namelist(), whl.read(next(n for n in whl.namelist() if n.endswith("top_level.txt"))).decode()


def test_only_maskrcnn_tfx_lands_at_the_top_of_site_packages(wheel_names):
    names, top_level = wheel_names
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"maskrcnn_tfx"}
    assert top_level.split() == ["maskrcnn_tfx"]


def test_the_design_card_folders_are_subpackages_with_their_data(wheel_names):
    names, _ = wheel_names
    for module in ("pipelines/pipeline.py", "components/annotation_validator.py", "trainer/task.py",
                   "serving/serve_cli.py", "config/presets/tiny.yaml", "config/presets/finetune.yaml",
                   "config/presets/coco_r50fpn.yaml",
                   "report/templates/run.html.j2"):
        assert f"maskrcnn_tfx/{module}" in names, module
    assert not [n for n in names if "/tests/" in n or n.startswith(("tests/", "benchmarks/"))]


def test_module_paths_written_into_pipelines_import_under_the_namespace():
    from maskrcnn_tfx.pipelines import pipeline  # pylint: disable=import-outside-toplevel
    import importlib  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.pipelines import eval_config  # pylint: disable=import-outside-toplevel
    assert eval_config.EVALUATOR_MODULE_PATH == "maskrcnn_tfx.pipelines.metrics"
    assert callable(importlib.import_module(eval_config.EVALUATOR_MODULE_PATH).custom_extractors)
    for dotted in (pipeline.RUN_FN, pipeline.PREPROCESSING_FN):
        module, _, attr = dotted.rpartition(".")
        assert module.startswith("maskrcnn_tfx.")
        assert callable(getattr(importlib.import_module(module), attr))
