"""The README's library example runs as written and prints what it promises."""
import contextlib
import io
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_library_example_runs():
  readme = open(os.path.join(REPO, "README.md")).read()
  section = readme[readme.index("## Library in your own Flax loop"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  out = io.StringIO()
  namespace = {}
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  printed = out.getvalue()
  total = [line for line in printed.splitlines() if line.startswith("total")]
  assert total and total[0].split()[-1] == "0.9000", printed  # counted from the weights, 90% of the kernels are 0
  sj, params = namespace["sj"], namespace["params"]
  summary = sj.summary(sj.get_masks(namespace["opt_state"]), params)
  assert summary["layers"]["layers_0/kernel"]["nnz"] == 23520 and summary["layers"]["layers_2/kernel"]["nnz"] == 300
  assert "layers_0/kernel" in printed and "23520" in printed
