"""`python -m kdjax.experiments NAME [flags]`: the same experiments, chosen by name."""

import sys

from kdjax.experiments import sweep
from kdjax.experiments.common import run

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: python -m kdjax.experiments {teacher,baseline,kd,cosine,hint,all,sweep} [flags]", file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "sweep":
        sys.exit(sweep.main(sys.argv[2:]))
    sys.exit(run(sys.argv[1], sys.argv[2:]))
