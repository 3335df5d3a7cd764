"""`python -m kdjax.experiments.gkd --help` lists the flags; the tutorial's training settings and the method's reference weights by default."""

import sys

from kdjax.experiments.common import run

if __name__ == "__main__":
    sys.exit(run("gkd"))
