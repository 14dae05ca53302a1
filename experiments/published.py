"""Published numbers our reproductions are held against (../shared/REFERENCES.md), as (sparsity, accuracy) points."""

# Greydanus 2020, "Scaling down deep learning", MNIST-1D lottery-ticket notebook: max test accuracy over training.
MNIST1D_LTH = {
    "dense": [(0.0, 0.664), (0.0, 0.654)],           # two trials
    "ticket": [(0.86, 0.748), (0.91, 0.750)],
    "random_mask": [(0.96, 0.505)],                    # "about 50-51% at 0.96"; peak near 67-69%
}

# Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models" (Wanda), Tables 2 and 3:
# LLaMA-2-7B WikiText-2 perplexity, dense and pruned in one shot without retraining, {(method, setting): ppl}.
WANDA_LLAMA2_7B = {
    "dense": 5.12,
    ("magnitude", "50%"): 14.89, ("sparsegpt", "50%"): 6.51, ("wanda", "50%"): 6.42,
    ("magnitude", "2:4"): 54.59, ("sparsegpt", "2:4"): 10.17, ("wanda", "2:4"): 11.02,
}


def nearest(points, sparsity, tol=0.01):
  """The published accuracy at a sparsity within `tol` of `sparsity`, or None."""
  close = [(abs(s - sparsity), acc) for s, acc in points if abs(s - sparsity) <= tol]
  return min(close)[1] if close else None


def plot_points(table=MNIST1D_LTH):
  """{label: [(fraction remaining, accuracy)]} for `lottery.plot_levels`."""
  return {f"published {k}": [(1.0 - s, a) for s, a in v] for k, v in table.items()}
