"""`python -m kdjax.experiments.methods --help` lists the flags; defaults are the tutorial's."""

import sys

from kdjax.experiments.common import run

if __name__ == "__main__":
    sys.exit(run("methods"))
