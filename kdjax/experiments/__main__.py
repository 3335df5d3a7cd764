"""`python -m kdjax.experiments NAME [flags]`: any experiment by name, every registered method included."""

import sys

from kdjax.config import EXPERIMENTS, GROUPS
from kdjax.experiments.common import run

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print(f"usage: python -m kdjax.experiments {{{','.join([*EXPERIMENTS, *GROUPS])}}} [flags]", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1], sys.argv[2:]))
