"""The README's Python examples run as written (the docs cannot rot silently)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("heading", ["## An emulated chip in ten lines",
                                     "## Your snntorch model on the backend"])
def test_readme_example_runs(heading, capsys):
    text = README.read_text()
    section = text[text.index(heading):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    exec(compile(code, f"README {heading}", "exec"), {})
