"""Next-token distillation: CE vs KD vs GKD-JSD students of a causal language model, over paired seeds.

    python -m kdjax.experiments.lm --seeds 0,1,2

Runs the `char-lm` recipe (Python's help text, character-level; causal_conv_128x5 teacher,
causal_conv_32x2 students; Adam 3e-3, batch 32 windows of 128, 10 epochs): the teacher with
CE, then CE, KD and GKD students from the same initial weights per seed. The report gives
bits per character with 95 % intervals and each method's paired difference to CE. Every
flag of `python -m kdjax.experiments.methods` applies (`--dataset text:PATH`, `--window`).
"""

import sys

from kdjax.experiments.common import run

if __name__ == "__main__":
    sys.exit(run("lm"))
