"""Every ```python block of the README and of the package-index description runs as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/long_description.md")


def _blocks(page):
  text = (ROOT / page).read_text()
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page, capsys):
  blocks = _blocks(page)
  assert blocks, f"{page} has no python block"
  for i, code in enumerate(blocks):
    exec(compile(code, f"{page}:block{i}", "exec"), {"__name__": f"readme_{i}"})


def test_long_description_has_no_relative_links():
  # The package index renders the description outside the repository: a
  # relative link or image there is broken.
  text = (ROOT / "docs/long_description.md").read_text()
  targets = re.findall(r"\]\(([^)]+)\)", text)
  assert targets and all(t.startswith(("https://", "http://")) for t in targets), targets
