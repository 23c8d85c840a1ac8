"""The examples gallery: each example's measured figure and printed table, from ``examples/``.

Every script in ``examples/`` gets a section: its docstring's first paragraph,
then whatever a full run left in ``examples/results/`` under the script's name
(``<name>.png`` figures, ``<name>.txt`` printed output), copied into
``docs/generated/gallery/`` at build time.
"""

from __future__ import annotations

import ast
from pathlib import Path

from jaxloss_docs.util import write_if_changed


def _summary(script: Path) -> str:
  doc = ast.get_docstring(ast.parse(script.read_text())) or ""
  return doc.split("\n\n")[0].replace("\n", " ").strip()


def _section(script: Path, results: Path, out: Path) -> str:
  name = script.stem
  lines = [f"## `{script.name}`", "", _summary(script) or "(no docstring)", ""]
  for figure in sorted(results.glob(f"{name}*.png")):
    write_if_changed(out / figure.name, figure.read_bytes())
    lines += [f"![{figure.stem}](gallery/{figure.name})", ""]
  for table in sorted(results.glob(f"{name}*.txt")):
    lines += [f"Printed by one full default run (`examples/results/{table.name}`):", "",
              "```text", table.read_text().rstrip(), "```", ""]
  if len(lines) == 4:
    lines += [f"Run `python examples/{script.name}` for its output; `--quick` for a smoke "
              "run (smoke-run scores are not results).", ""]
  return "\n".join(lines)


def write_gallery(repo: Path, out: Path) -> None:
  """Writes ``out/gallery.md`` (included by ``docs/gallery.md``) and its figures."""
  examples = repo / "examples"
  scripts = sorted(p for p in examples.glob("*.py") if not p.name.startswith("_"))
  body = "\n".join(_section(s, examples / "results", out / "gallery") for s in scripts)
  write_if_changed(out / "gallery.md", body)
