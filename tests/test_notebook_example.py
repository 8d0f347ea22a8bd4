"""examples/notebook.py, the Python API end to end, runs as CI runs it: a subprocess in an empty
folder, under a minute; docs/python-api.md shows exactly that file."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "notebook.py"


def test_docs_show_the_example_verbatim() -> None:
    doc = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks


def test_notebook_example_runs(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "meta-trained 12 steps" in text
    assert re.search(r"held-out accuracy after k inner steps: \[(0\.\d+, ){3}0\.\d+\]", text)
    assert "labels ['bar', 'circle', 'cross', 'square', 'triangle']; query accuracy" in text
    assert 'library_name: "metactl"' in text
    query = float(re.search(r"query accuracy (\d\.\d\d)", text).group(1))  # type: ignore[union-attr]
    served = float(re.search(r"onnxruntime on 25 query images: accuracy (\d\.\d\d)", text).group(1))  # type: ignore[union-attr]
    assert served == query  # onnxruntime alone reproduces the adapted model's query accuracy
    assert query > 0.2  # better than chance over five labels
    assert (tmp_path / "notebook-demo" / "export" / "README.md").is_file()
    assert seconds < 180


def test_docs_list_each_functions_keywords_as_the_library_defines_them() -> None:
    """The signature table of docs/python-api.md names exactly the keywords of each function."""
    import inspect

    from metactl import library

    doc = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    for name in ("meta_train", "adapt", "export", "evaluate", "predict"):
        shown = re.search(rf"`metactl\.{name}\((.*?)\)`", doc)
        assert shown is not None, name
        documented = {p.strip().split("=")[0].lstrip("*") for p in shown.group(1).split(",")} - {"", "*"}
        params = inspect.signature(getattr(library, name)).parameters.values()
        actual = {p.name for p in params} - {"command"}  # command: how the CLI passes the command line it records
        assert documented == actual, (name, documented ^ actual)
