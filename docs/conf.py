"""Sphinx configuration of the jaxloss docs.

Build (warnings are errors):

  sphinx-build -W --keep-going -b html docs docs/_build/html
  sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

or ``tox -e docs``. Pages, plots and tables under ``docs/generated/`` are
written at build time by ``docs/_ext/jaxloss_docs``.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The doctests and plots run hundreds of small computations, mostly op by op:
# compile time dominates, and XLA's backend optimisations roughly double it.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import jaxloss  # noqa: E402

project = "jaxloss"
author = "the jaxloss authors"
copyright = "2026, the jaxloss authors"
release = version = jaxloss.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax from the package, copied into the build: math renders offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.doctest",
    "jaxloss_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_templates", "_ext", "generated/*.md", "long_description.md",
                    "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

doctest_global_setup = """
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax
import jax.numpy as jnp
import numpy as np
import jaxloss
"""

html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["jaxloss.css"]
html_title = f"jaxloss {release}"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
}
