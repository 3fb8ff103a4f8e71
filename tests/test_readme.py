"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _python_blocks()[index].replace("model.fit(x, y, epochs=1)", "model.fit(x, y, epochs=1, verbose=0)")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
