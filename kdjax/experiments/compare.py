"""`python -m kdjax.experiments.compare RUN_DIR[:METHOD,...] ...`: one report of several runs' students.

Pairs members across commands by seed, e.g. a sweep on a validation split with the CE
baseline that `baseline --validation-size N` trained:

    python -m kdjax.experiments.compare experiments/runs/at-<hash> experiments/runs/baseline-<hash>

`:METHOD,...` takes only those methods from a run (say which run's CE is the baseline).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from kdjax.identity import fingerprint
from kdjax.report import RunFolderError, compare_runs


def parse_source(text: str) -> tuple[pathlib.Path, list[str] | None]:
    folder, _, names = text.partition(":")
    return pathlib.Path(folder), [name for name in names.split(",") if name] or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdjax.experiments.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[:METHOD,...]",
                        help="run folders an experiment wrote; `:kd,at` takes only those methods' students")
    parser.add_argument("--output-dir", default="experiments/runs", help="where the comparison's folder goes")
    args = parser.parse_args(argv)
    sources = [parse_source(text) for text in args.runs]
    output = pathlib.Path(args.output_dir) / f"compare-{fingerprint([str(s) for s in args.runs])}"
    try:
        print(compare_runs(sources, output))
    except RunFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"compare: outputs in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
