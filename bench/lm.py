"""Language-model distillation losses, fused against unfused: XLA's memory analysis and time per step.

    python -m bench.lm [--time 4096:32000:float32 ...] [--repeats 3] [--markdown PATH]

A step is `jax.value_and_grad` of the loss with respect to the student's hidden states and
LM head, the teacher's hidden states and head given: unfused, `kd_loss(hs @ ws, ht @ wt)`
(and `generalized_jsd_loss`, β = 0.5); fused, `fused_kd_loss(hs, ws, ht, wt)` (and
`fused_generalized_jsd_loss`) at their default chunk. Hidden size 2,048 for both models.

Memory: the compiled program's temporaries and its total (arguments + outputs +
temporaries), from `compiled.memory_analysis()`, for 4,096 and 8,192 tokens, vocabularies
32,000 and 128,256, bf16 and float32; nothing is allocated, so the unfused program's
figure is reported even where it would not fit in this machine's memory. Time: seconds per
step (median of `--repeats` after one warm-up, fused and unfused taking turns) at each
`--time` configuration, `tokens:vocab:dtype`, which must fit in memory unfused.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.__main__ import cpu_model
from kdjax import losses

HIDDEN = 2048
TOKENS = (4096, 8192)
VOCABS = (32_000, 128_256)
DTYPES = ("bfloat16", "float32")
LOSSES = {
    "kd": (lambda hs, ws, ht, wt: losses.kd_loss(hs @ ws, ht @ wt),
           lambda hs, ws, ht, wt: losses.fused_kd_loss(hs, ws, ht, wt)),
    "jsd": (lambda hs, ws, ht, wt: losses.generalized_jsd_loss(hs @ ws, ht @ wt, beta=0.5),
            lambda hs, ws, ht, wt: losses.fused_generalized_jsd_loss(hs, ws, ht, wt, beta=0.5)),
}
GB = 1e9


def _step(loss):
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _shapes(tokens: int, vocab: int, dtype: str):
    spec = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.dtype(dtype))
    return spec((tokens, HIDDEN)), spec((HIDDEN, vocab)), spec((tokens, HIDDEN)), spec((HIDDEN, vocab))


def memory(loss, tokens: int, vocab: int, dtype: str) -> tuple[float, float]:
    """(temporary, total) bytes of the compiled step."""
    analysis = _step(loss).lower(*_shapes(tokens, vocab, dtype)).compile().memory_analysis()
    temp = analysis.temp_size_in_bytes
    return temp, analysis.argument_size_in_bytes + analysis.output_size_in_bytes + temp


def seconds_per_step(tokens: int, vocab: int, dtype: str, name: str, repeats: int) -> tuple[float, float]:
    """(unfused, fused) median seconds per step, the two taking turns."""
    keys = jax.random.split(jax.random.key(0), 4)
    args = [jax.random.normal(k, s.shape, s.dtype) * (0.02 if i % 2 else 1.0)
            for i, (k, s) in enumerate(zip(keys, _shapes(tokens, vocab, dtype)))]
    steps = [_step(loss) for loss in LOSSES[name]]
    for step in steps:
        jax.block_until_ready(step(*args))
    times = ([], [])
    for _ in range(repeats):
        for step, out in zip(steps, times):
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def report(time_configs: list[tuple[int, int, str]], repeats: int,
           memory_configs: list[tuple[int, int, str]] | None = None) -> str:
    lines = [f"host: {cpu_model()}, {jax.device_count()} × {jax.devices()[0].device_kind}, jax {jax.__version__}",
             f"hidden {HIDDEN}; a step is value_and_grad with respect to the student's hidden states and head", "",
             "| tokens | vocab | dtype | loss | unfused temp GB | fused temp GB | fused / unfused | unfused total GB "
             "| fused total GB |", "|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    configs = itertools.product(TOKENS, VOCABS, DTYPES) if memory_configs is None else memory_configs
    for (tokens, vocab, dtype), name in itertools.product(configs, LOSSES):
        (u_temp, u_total), (f_temp, f_total) = (memory(loss, tokens, vocab, dtype) for loss in LOSSES[name])
        lines.append(f"| {tokens} | {vocab} | {dtype} | {name} | {u_temp / GB:.2f} | {f_temp / GB:.2f} | "
                     f"{f_temp / u_temp:.3f} | {u_total / GB:.2f} | {f_total / GB:.2f} |")
    if time_configs:
        lines += ["", f"seconds per step, median of {repeats} (one warm-up each, fused and unfused taking turns):", "",
                  "| tokens | vocab | dtype | loss | unfused s | fused s | fused / unfused |", "|---:|---:|---|---|---:|---:|---:|"]
        for (tokens, vocab, dtype), name in itertools.product(time_configs, LOSSES):
            unfused, fused = seconds_per_step(tokens, vocab, dtype, name, repeats)
            lines.append(f"| {tokens} | {vocab} | {dtype} | {name} | {unfused:.2f} | {fused:.2f} | "
                         f"{fused / unfused:.2f} |")
    return "\n".join(lines)


def _config(text: str) -> tuple[int, int, str]:
    try:
        tokens, vocab, dtype = text.split(":")
        if dtype not in DTYPES:
            raise ValueError
        return int(tokens), int(vocab), dtype
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected tokens:vocab:dtype with dtype in {DTYPES}, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", type=_config, nargs="*", default=[(4096, 32_000, "float32")],
                        help="configurations to time, tokens:vocab:dtype (none: memory only)")
    parser.add_argument("--memory", type=_config, nargs="*", default=None,
                        help="configurations whose memory to analyse, tokens:vocab:dtype (default: every one of "
                             f"tokens {TOKENS}, vocabularies {VOCABS}, {DTYPES})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the tables here")
    args = parser.parse_args(argv)
    text = report(args.time, args.repeats, args.memory)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
