"""Experiment configs: `get_config()` per file; run with `python -m experiments.train --config=configs/<name>.py`."""
