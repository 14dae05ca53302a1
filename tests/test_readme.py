"""The README's library example runs as written and prints what it promises."""
import contextlib
import io
import os
import re

import pytest

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


def _run_block(heading):
  readme = open(os.path.join(REPO, "README.md")).read()
  section = readme[readme.index(heading):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  out, namespace = io.StringIO(), {}
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return out.getvalue(), namespace


@pytest.mark.slow  # 17 s of CPU alone (compiles); the same example runs in make test as sparsejax.tickets' doctest
def test_readme_lottery_example_runs():
  printed, ns = _run_block("## Lottery tickets in your own loop")
  levels = [line.split() for line in printed.splitlines()]
  assert [int(lv[0]) for lv in levels] == [0, 1, 2, 3]
  assert [round(float(lv[1]), 3) for lv in levels] == [0.0, 0.2, 0.36, 0.488]  # counted from the trained weights
  sj, masks, rand = ns["sj"], ns["masks"], ns["rand"]
  ticket, control = sj.summary(masks)["layers"], sj.summary(rand)["layers"]
  assert {p: d["nnz"] for p, d in ticket.items()} == {p: d["nnz"] for p, d in control.items()}
  assert sj.summary(masks, ns["fresh"])["total"]["nnz"] == sj.summary(masks)["total"]["nnz"]  # reinit: the same masks


# 20 s of CPU alone (compiles); in make test, as issue 13 asks the README's NNX and Equinox examples to be.
def test_readme_nnx_and_equinox_example_runs():
  printed, ns = _run_block("## Flax NNX and Equinox")
  sj = ns["sj"]
  nnx_summary = sj.summary(sj.get_masks(ns["optimizer"].opt_state), ns["nnx"].state(ns["model"], ns["nnx"].Param))
  eqx_summary = sj.summary(sj.get_masks(ns["opt_state"]), ns["params"])
  assert list(nnx_summary["layers"]) == ["layers/0/kernel", "layers/2/kernel"]
  assert list(eqx_summary["layers"]) == ["layers/0/weight", "layers/1/weight"]
  for s in (nnx_summary, eqx_summary):
    assert s["total"]["sparsity"] >= 0.75  # counted from the weights: RigL grows weights at 0, and one whose gradient
  for tx_state in (ns["optimizer"].opt_state, ns["opt_state"]):  # stays 0 (a dead ReLU unit) stays 0
    assert sj.summary(sj.get_masks(tx_state))["total"]["sparsity"] == 0.75
  assert printed.count("total") == 2 and "layers/0/weight" in printed and "layers/2/kernel" in printed
