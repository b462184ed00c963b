"""Installs the Mask R-CNN TFX product and its ``maskrcnn-tfx`` command.

Versions are pinned in ``requirements/constraints.txt`` (install with ``-c`` it); the ranges below only say
what the code needs, so the package can still be installed into a user's own environment.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="maskrcnn-tfx",
    version="0.1.0",
    description="Mask R-CNN instance segmentation as a production TFX pipeline "
                "(ingest, validate, transform, train, evaluate, push, serve).",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.11",
    # One installed namespace. pipelines/, components/, trainer/ and serving/ stay at the repository's top (the
    # design card's layout) and are its subpackages through the symlinks maskrcnn_tfx/<name> -> ../<name>, so no
    # generic top-level name (a user's own trainer/ or serving/) is shadowed in site-packages.
    packages=find_packages(include=["maskrcnn_tfx", "maskrcnn_tfx.*"]),
    include_package_data=True,
    # The report's page templates and stylesheet; the Trainer's presets (data, read by name).
    package_data={"maskrcnn_tfx.report": ["templates/*"], "maskrcnn_tfx.config": ["presets/*.yaml"]},
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras~=2.16.0",
        "tensorflow-model-analysis==0.47.1",
        "tensorflow-transform==1.16.0",
        "tensorflow-data-validation==1.16.1",
        "tf-models-official==2.16.0",
        "tensorflow-serving-api~=2.16.0",
        # tfx-bsl 1.16 imports dill, which recent apache-beam releases no longer install.
        "dill",
        "pycocotools>=2.0.7",
        "pillow",
        "opencv-python-headless",
        "numpy<2",
        "tqdm",
        "pyyaml",
        # The report: pages (Jinja2) and charts (matplotlib).
        "jinja2",
        "matplotlib",
        # The local server's REST responses (numpy arrays to JSON); TFX depends on it too.
        "orjson",
        # The local server's REST front end and its Prometheus metrics.
        "aiohttp",
        "prometheus-client",
    ],
    # The report's tests drive Chromium over its DevTools websocket and execute the notebook; `make test` runs
    # the suite on two processes (pytest-xdist), whose test groups pytest 9.2 loses (tests/conftest.py).
    extras_require={"test": ["pytest<9.2", "pytest-xdist", "websocket-client", "nbclient", "nbformat",
                             "ipykernel"]},
    entry_points={"console_scripts": ["maskrcnn-tfx=maskrcnn_tfx.cli:main"]},
)
