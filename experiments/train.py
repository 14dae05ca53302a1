r"""Trains one config from a checkout: `sparsejax.launch` (installed as the `sparsejax-train` command).

  python -m experiments.train --config=configs/mnist1d_mlp_gmp.py --workdir=runs/mnist1d_mlp_gmp \
      [--config.training.num_steps=500 ...]

Exit status: 0 finished, 2 bad input (one message on stderr, no traceback), 3 diverged; see `sparsejax.launch`.
"""
from sparsejax.launch import BAD_INPUT, DIVERGED, main, run  # noqa: F401

if __name__ == "__main__":
  main()
