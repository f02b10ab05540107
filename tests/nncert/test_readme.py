"""The examples of README.md's "Python API" section run as they are, from the repository's root."""

from __future__ import annotations

import re

import pytest

from tests.paths import REPO

SECTION = "## Python API"


def python_examples() -> list[str]:
    """The ```python blocks of the README's Python API section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_has_examples_for_each_use():
    joined = "\n".join(python_examples())
    for call in ("nncert.bounds(", "nncert.certify(", "nncert.certify_vnnlib(", "nncert.sabr_loss(",
                 "nncert.sabr_region("):
        assert call in joined, call


@pytest.mark.parametrize("index", range(len(python_examples())))
def test_example_runs(index, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    exec(compile(python_examples()[index], f"README.md example {index + 1}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out  # every example shows its results
