r"""Trains one config: flags only; the loop is `sparsejax.train.train_and_evaluate`.

  python -m experiments.train --config=configs/mnist1d_mlp_gmp.py --workdir=runs/mnist1d_mlp_gmp \
      [--config.training.num_steps=500 ...]

Running again with the same workdir resumes from its latest checkpoint; a finished run prints its results.
"""
from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Orbax logs every save at INFO; our progress lines say what matters. --verbosity=0 brings the logs back.
    logging.set_verbosity(logging.WARNING)
  # Imported here so that --help answers without initialising JAX.
  from sparsejax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
