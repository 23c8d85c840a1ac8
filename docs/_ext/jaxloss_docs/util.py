"""Small helpers shared by the build-time generators."""

from __future__ import annotations

from pathlib import Path


def write_if_changed(path: Path, data: str | bytes) -> None:
  """Writes ``data`` unless the file already holds it.

  Keeping the modification time of unchanged files lets Sphinx skip re-reading
  the pages that include them (the html and doctest builds share doctrees).
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  raw = data.encode() if isinstance(data, str) else data
  if path.exists() and path.read_bytes() == raw:
    return
  path.write_bytes(raw)
