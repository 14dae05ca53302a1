"""notebooks/quickstart.ipynb runs top to bottom on CPU (nbclient) and shows what it says; it is what the generator
notebooks/make_quickstart.py writes.

The kernel is this interpreter: a kernel spec written to a temporary JUPYTER_PATH (searched first) runs
`sys.executable -m ipykernel_launcher`, so a `python3` kernel registered elsewhere (another Python, without
sparsejax) is never picked up. The `assert` lines in the notebook's cells are its checks; an error in any cell fails
this test with that cell's traceback.
"""
import importlib.util
import json
import os
import re
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _generator():
  spec = importlib.util.spec_from_file_location("make_quickstart", os.path.join(REPO, "notebooks",
                                                                                 "make_quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_notebook_is_what_the_generator_writes():
  committed = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(committed)
  built = _generator().build()
  assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
      "notebooks/quickstart.ipynb differs from notebooks/make_quickstart.py: run `python notebooks/make_quickstart.py`")


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  spec_dir = tmp_path / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (sparsejax tests)", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend puts the figure in the outputs
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:  # run from a clean state whatever outputs were committed
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  start = time.time()
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  seconds = time.time() - start
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  for target in ("0.7500", "0.9375"):  # the sparsities counted in the weights are the targets
    assert f"gmp  target {target}: sparsity {target}" in text, text
    assert re.search(rf"rigl target {target}: sparsity {target[:-1]}\d", text), text
  for level, sparsity in [(1, "0.5000"), (2, "0.7500"), (3, "0.8750"), (4, "0.9375")]:
    assert f"imp level {level}: sparsity {sparsity}" in text, text
  assert "layers_4/kernel: 80 of 1280 weights kept" in text, text
  assert any("image/png" in o.get("data", {}) for o in outputs), "the plot is missing"
  print(f"notebooks/quickstart.ipynb executed in {seconds:.1f} s")
