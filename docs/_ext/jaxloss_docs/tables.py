"""The measured imbalanced-segmentation table, read from the examples' JSON at build time."""

from __future__ import annotations

import json
from pathlib import Path

from jaxloss_docs.util import write_if_changed

RESULTS = Path("examples/results/imbalanced_segmentation.json")

MISSING = """```{note}
The measured table appears here when `examples/results/imbalanced_segmentation.json`
exists: run `python examples/imbalanced_segmentation.py` and rebuild the docs.
```
"""


def _cell(value) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
  if isinstance(value, dict | list):
    return json.dumps(value, sort_keys=True).replace("|", "\\|")
  return str(value).replace("|", "\\|")


def _rows(data) -> tuple[list[dict], dict]:
  """Returns ``(rows, metadata)`` from the shapes a results file may take.

  Accepted: a list of row dicts; ``{"rows"|"results": [...] or {...}, ...metadata}``;
  or ``{name: {metric: value}}``.
  """
  meta: dict = {}
  if isinstance(data, dict):
    for key in ("rows", "results", "losses"):
      if key in data:
        meta = {k: v for k, v in data.items() if k != key}
        data = data[key]
        break
  if isinstance(data, dict):
    data = [{"loss": name, **(v if isinstance(v, dict) else {"value": v})}
            for name, v in data.items()]
  if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
    raise ValueError("expected a list of row objects")
  return data, meta


def render(data) -> str:
  rows, meta = _rows(data)
  columns: list[str] = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
  text = "\n".join(lines) + "\n"
  if meta:
    settings = "; ".join(f"{k}: {_cell(v)}" for k, v in meta.items())
    text += f"\nSettings recorded with the run: {settings}.\n"
  return text


def write_imbalanced_table(repo: Path, out: Path) -> None:
  path = repo / RESULTS
  if not path.exists():
    text = MISSING
  else:
    try:
      text = (f"Measured by `examples/imbalanced_segmentation.py` "
              f"(`{RESULTS.as_posix()}`):\n\n" + render(json.loads(path.read_text())))
    except (ValueError, TypeError) as e:
      text = f"```{{warning}}\n`{RESULTS.as_posix()}` could not be read: {e}\n```\n"
  write_if_changed(out / "imbalanced_segmentation_table.md", text)
