"""Sphinx configuration.  Built with warnings as errors by ``./run test``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "secagg"
author = "secagg developers"
copyright = "2026, secagg developers"  # noqa: A001
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_static"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Optional extras (torch, flwr) may be absent when the docs build.
autodoc_mock_imports = ["torch", "opacus", "flwr"]
suppress_warnings = ["myst.header"]
nitpicky = False
html_theme = "alabaster"
