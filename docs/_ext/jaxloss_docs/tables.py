"""The measured imbalanced-segmentation table, read from the examples' JSON at build time."""

from __future__ import annotations

import json
from pathlib import Path

from jaxloss_docs.util import write_if_changed

RESULTS = Path("examples/results/imbalanced_segmentation.json")

MISSING = """```{note}
The measured table appears here when `examples/results/imbalanced_segmentation.json`
exists: run
`python examples/imbalanced_segmentation.py --out examples/results` and rebuild the docs.
```
"""


def _cell(value) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float) and value != value:
    return "-"  # undefined, e.g. the precision of a class never predicted
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


def _fmt(v, spec=".3f") -> str:
  return "--" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def _config(config: dict) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in config.items()).replace("|", "\\|")


def render_results(data: dict) -> str:
  """The two tables of ``examples/imbalanced_segmentation.py``'s summary."""
  classes, results = list(data["classes"]), data["results"]
  names = list(results)
  first = results[names[0]]
  out = []
  if "test_class_fraction" in first:
    out.append("Held-out pixel fractions: " + ", ".join(
        f"{c} {100 * f:.1f}%" for c, f in zip(classes, first["test_class_fraction"],
                                              strict=False)) + ".")
  if "settings" in data:
    out.append("Settings: " + ", ".join(f"{k}={v}" for k, v in data["settings"].items()) + ".")
  out.append("")
  head = ["loss", "mIoU", "foreground mIoU", *(f"IoU {c}" for c in classes), "steps/s",
          "`build_loss` config"]
  out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    r = results[n]
    cells = [f"`{n}`", _fmt(r.get("mean_iou")), _fmt(r.get("foreground_mean_iou")),
             *(_fmt(v) for v in r.get("iou", [None] * len(classes))),
             _fmt(r.get("steps_per_s"), ".1f"), f"`{_config(r.get('config', {}))}`"]
    out.append("| " + " | ".join(cells) + " |")
  out += ["", "Per class: precision / recall / over-prediction (predicted pixels / true "
          "pixels; > 1 means the class is over-predicted).", ""]
  head = ["loss", *classes]
  out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    r = results[n]
    cells = [f"`{n}`"] + [
        f"{_fmt(p, '.2f')} / {_fmt(q, '.2f')} / {_fmt(o, '.2f')}"
        for p, q, o in zip(r["precision"], r["recall"], r["over_prediction"], strict=False)]
    out.append("| " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"


def render(data) -> str:
  if isinstance(data, dict) and "results" in data and "classes" in data:
    try:
      return render_results(data)
    except (KeyError, TypeError):
      pass
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
