"""notebooks/inspect_tasks.ipynb runs headless, top to bottom, offline, on this interpreter's environment."""
import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "inspect_tasks.ipynb"


def _venv_kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec that runs *this* python (the project's .venv), found first on JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "ext5-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ext5 test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "ext5-test"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", ""))
    return "".join(out)


def test_notebook_matches_its_source():
    """The .ipynb is generated from notebooks/_build_inspect_tasks.py (reviewable); they must not drift."""
    sys.path.insert(0, str(NOTEBOOK.parent))
    try:
        import _build_inspect_tasks as source
    finally:
        sys.path.pop(0)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == \
        [(c.cell_type, c.source) for c in source.build().cells], "re-run notebooks/_build_inspect_tasks.py"


def test_inspect_tasks_notebook_executes(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    assert "find_spec(\"ext5\") is None" in nb.cells[1].source  # the install cell is skipped when ext5 imports
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(nb, timeout=240, kernel_name=_venv_kernel(tmp_path, monkeypatch),
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert _text(cells[0]).strip() == sys.executable
    assert "ext5 already installed" in _text(cells[1])
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    text = "\n".join(_text(c) for c in cells)
    assert "local_default" in text and "local_span_corruption" in text
    assert "fill: inputs" in text and "<extra_id_0>" in text
    images = sum("image/png" in o.get("data", {}) for c in cells for o in c.outputs)
    assert images >= 3  # share chart, segment-id map, length histograms
