"""Sphinx configuration: ``sphinx-build docs docs/_build`` (pip install -e '.[docs]')."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))
from cauldron_zmq import __version__  # noqa: E402

project = "cauldron_zmq"
author = "cauldron_zmq developers"
release = version = __version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
# cauldron_zmq.web.app imports starlette, the [web] extra: the docs build with [docs] alone.
autodoc_mock_imports = ["starlette", "uvicorn"]
