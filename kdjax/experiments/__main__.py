"""`python -m kdjax.experiments NAME [flags]`: the same experiments, chosen by name."""

import sys

from kdjax.experiments.common import run

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: python -m kdjax.experiments {teacher,baseline,kd,cosine,hint,all} [flags]", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1], sys.argv[2:]))
