"""Runnable experiments: `python -m kdjax.experiments.<name>` for teacher, baseline, kd, cosine, hint, all; `python -m kdjax.experiments <method>` for any registered method."""
