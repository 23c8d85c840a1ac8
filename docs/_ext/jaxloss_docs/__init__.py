"""Sphinx extension of the jaxloss docs: build-time pages, plots, and the API check.

At ``config-inited`` (before Sphinx lists the source files, so that autosummary
sees the generated pages) it writes into ``docs/generated/`` (git-ignored):

* ``api/*.rst``: one API page per family, from :data:`api.FAMILIES`, listing the
  names of ``jaxloss.__all__`` (a family not merged yet is a short note), the
  Flax NNX / Linen wrapper pages and the ``build_loss`` type table, both from
  the registry;
* ``imbalanced_segmentation_table.md``: the measured table of
  ``examples/results/imbalanced_segmentation.json``, or a note;
* ``gallery.md`` and ``gallery/*.png``: each example's figure and measured
  output from ``examples/results/``;
* ``plots/*.png``: figures drawn with matplotlib from the real losses.

At ``env-check-consistency`` it fails the build when a public symbol
(``jaxloss.__all__``, ``jaxloss.nnx.__all__``, ``jaxloss.linen.__all__``) is
not documented in the API reference.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.application import Sphinx

from jaxloss_docs import api, gallery, plots, tables


def _generate(app: Sphinx, config) -> None:
  out = Path(app.srcdir) / "generated"
  api.write_pages(out / "api")
  tables.write_imbalanced_table(Path(app.srcdir).parent, out)
  gallery.write_gallery(Path(app.srcdir).parent, out)
  plots.write_all(out / "plots")


def setup(app: Sphinx) -> dict:
  app.connect("config-inited", _generate)
  app.connect("env-check-consistency", api.check_documented)
  app.connect("autodoc-process-signature", api.wrapper_signature)
  app.connect("autodoc-process-docstring", api.join_parameter_lists, priority=400)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
