"""Runnable experiments: `python -m kdjax.experiments.<name>` for teacher, baseline, kd, cosine, hint, all."""
