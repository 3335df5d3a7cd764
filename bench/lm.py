"""Language-model distillation, fused against unfused: XLA's memory analysis and time per step.

    python -m bench.lm [--time 4096:32000:float32 ...] [--repeats 3] [--markdown PATH]
                       [--engine 8x512:128256 ...] [--engine-time 8x512:32000 ...]

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

Engine rows: one member's whole distillation step as the engine compiles it (the student's
forward and backward, the teacher's forward, Adam), CE, KD and GKD, for a tiny embedding +
Dense student (d 64) and teacher (d 128) at `--engine BATCHxTIME:VOCAB`; "logits" is the
path of networks that declare no output head, "fused" that of networks that do. Temporaries
from XLA's memory analysis of the program step; tokens/s (median of `--repeats`) at each
`--engine-time` configuration, the logits path only where its step fits in memory.

Offline rows (`--offline BATCHxTIME:VOCAB`): the same student's fused step with KD from the live teacher
against `topk-kd` from a stored top-k table (`--offline-k`, bfloat16 values, int32 indices, resident on
the device as `kdjax.offline.read` places it): tokens/s, and the table's bytes per token.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.__main__ import cpu_model
from kdjax import losses, methods

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


def _shapes(tokens: int, vocab: int, dtype: str, hidden: int = HIDDEN):
    spec = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.dtype(dtype))
    return spec((tokens, hidden)), spec((hidden, vocab)), spec((tokens, hidden)), spec((hidden, vocab))


def memory(loss, tokens: int, vocab: int, dtype: str, hidden: int = HIDDEN) -> tuple[float, float]:
    """(temporary, total) bytes of the compiled step."""
    analysis = _step(loss).lower(*_shapes(tokens, vocab, dtype, hidden)).compile().memory_analysis()
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
           memory_configs: list[tuple[int, int, str]] | None = None, hiddens: tuple[int, ...] = (HIDDEN,)) -> str:
    lines = [f"host: {cpu_model()}, {jax.device_count()} × {jax.devices()[0].device_kind}, jax {jax.__version__}",
             "a step is value_and_grad with respect to the student's hidden states and head", "",
             "| hidden | tokens | vocab | dtype | loss | unfused temp GB | fused temp GB | fused / unfused | unfused total "
             "GB | fused total GB |", "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    configs = itertools.product(TOKENS, VOCABS, DTYPES) if memory_configs is None else memory_configs
    for hidden, (tokens, vocab, dtype), name in itertools.product(hiddens, configs, LOSSES):
        (u_temp, u_total), (f_temp, f_total) = (memory(loss, tokens, vocab, dtype, hidden) for loss in LOSSES[name])
        lines.append(f"| {hidden} | {tokens} | {vocab} | {dtype} | {name} | {u_temp / GB:.2f} | {f_temp / GB:.2f} | "
                     f"{f_temp / u_temp:.3f} | {u_total / GB:.2f} | {f_total / GB:.2f} |")
    if time_configs:
        lines += ["", f"seconds per step, median of {repeats} (one warm-up each, fused and unfused taking turns):", "",
                  "| tokens | vocab | dtype | loss | unfused s | fused s | fused / unfused |", "|---:|---:|---|---|---:|---:|---:|"]
        for (tokens, vocab, dtype), name in itertools.product(time_configs, LOSSES):
            unfused, fused = seconds_per_step(tokens, vocab, dtype, name, repeats)
            lines.append(f"| {tokens} | {vocab} | {dtype} | {name} | {unfused:.2f} | {fused:.2f} | "
                         f"{fused / unfused:.2f} |")
    return "\n".join(lines)


ENGINE_METHODS = ("ce", "kd", "gkd")
LAYOUTS = {"1 device": (1, "replicated"), "4 fsdp": (4, "fsdp")}  # name -> (devices, parameter sharding)
STUDENT_WIDTH, TEACHER_WIDTH = 64, 128


def embed_dense(vocab: int, width: int, time_: int, fused: bool):
    """Token ids `[batch, time_]` -> Embed(vocab, width) -> Dense(vocab): the smallest language model with a 128k
    head; `fused`: it declares that head (`OutputHead`)."""
    from flax import linen as nn

    from kdjax.network import OutputHead, linen_network

    class EmbedDense(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            return nn.Dense(vocab)(nn.Embed(vocab, width)(tokens))

    return linen_network(EmbedDense(), input_shape=(time_,), train_argument=None, input_dtype=jnp.int32,
                         name=f"embed{width}-dense", head=OutputHead("Embed_0", "Dense_0") if fused else None)


def _engine_setup(batch: int, time_: int, vocab: int, fused: bool, layout: str):
    from kdjax.data import from_tokens
    from kdjax.teacher import Teacher
    from kdjax.train import Settings

    windows = 2 * batch + 2  # two training batches, and test windows
    tokens = np.random.default_rng(0).integers(0, vocab, windows * (time_ + 1)).astype(np.int32)
    data = from_tokens(tokens, time=time_, vocab_size=vocab, test_fraction=2 / windows)
    student, teacher = (embed_dense(vocab, width, time_, fused) for width in (STUDENT_WIDTH, TEACHER_WIDTH))
    devices, sharding = LAYOUTS[layout]
    settings = Settings(batch_size=batch, epochs=1, devices=devices, parameter_sharding=sharding)
    return data, student, Teacher(teacher, *jax.eval_shape(teacher.init, jax.random.key(0))), settings


def _engine_objective(method: str, student, teacher):
    from kdjax.train import build_objective

    method = methods.get(method)
    return build_objective(method, student, teacher.network if method.needs_teacher_network else None)


def _stored_topk(examples: int, time_: int, vocab: int, k: int):
    """A random top-k table `[examples, time, k]` as `kdjax.offline.read` returns it (bfloat16, int32)."""
    from kdjax.losses.topk import TopKLogits
    from kdjax.teacher import CachedTeacher

    rng = np.random.default_rng(0)
    values = -np.sort(-rng.normal(size=(examples, time_, k)), axis=-1).astype(jnp.bfloat16)
    indices = np.argsort(rng.random((examples, time_, vocab)), axis=-1)[..., :k].astype(np.int32) if vocab <= 4096 \
        else rng.integers(0, vocab, (examples, time_, k)).astype(np.int32)  # distinctness does not change the time
    return CachedTeacher({methods.TOPK_READ: TopKLogits(jnp.asarray(values), jnp.asarray(indices))})


@functools.lru_cache(maxsize=None)  # the time rows ask again whether the logits path fits
def engine_memory(batch: int, time_: int, vocab: int, method: str, fused: bool, layout: str) -> tuple[int, int]:
    """(temporary, total) bytes per device of one member's engine program step."""
    from kdjax.engine.memory import program_analysis
    from kdjax.parallel import batch_mesh

    data, student, teacher, settings = _engine_setup(batch, time_, vocab, fused, layout)
    objective = _engine_objective(method, student, teacher)
    analysis = program_analysis(objective, data.train, settings, teacher if objective.method.needs_teacher else None,
                                batch_mesh(settings.devices))
    temp = analysis.temp_size_in_bytes
    return temp, temp + analysis.argument_size_in_bytes + analysis.output_size_in_bytes


def engine_tokens_per_second(batch: int, time_: int, vocab: int, method: str, fused: bool, layout: str,
                             repeats: int, k: int = 64) -> float:
    """Median tokens/s of the engine's program step for one member, its inputs placed as a run places them."""
    from kdjax.engine.members import stack_hyperparameters
    from kdjax.engine import Member
    from kdjax.engine.step import ProgramSpec, init_states, jitted_step, state_shardings
    from kdjax.parallel import batch_mesh, place, replicate

    data, student, teacher, settings = _engine_setup(batch, time_, vocab, fused, layout)
    objective = _engine_objective(method, student, teacher)
    mesh = batch_mesh(settings.devices)
    spec = ProgramSpec(objective, batch, len(data.train), "none", True, mesh,
                       parameter_sharding=settings.parameter_sharding)
    states = init_states(objective, [0], 1e-3)
    states = place(states, state_shardings(states, spec))
    if objective.method.needs_teacher_network:
        live = teacher.replace(params=teacher.network.init(jax.random.key(1))[0], state={})
        live = live.on(mesh, settings.parameter_sharding)
    else:
        live = _stored_topk(len(data.train), time_, vocab, k).on(mesh) if objective.method.needs_teacher else None
    keys = replicate(jnp.stack([jax.random.key(0)]), mesh)
    hp = replicate(stack_hyperparameters([Member.of(method, 0)]), mesh)
    arrays = replicate(data.train.arrays(), mesh)
    orders = replicate(jnp.arange(len(data.train), dtype=jnp.int32)[None, : 2 * batch], mesh)
    step = jitted_step(spec)

    def run(states, index):
        states, metrics = step(states, orders, jnp.int32(0), jnp.int32(index % 2), arrays, live, keys, keys, hp)
        jax.block_until_ready(metrics)
        return states

    states = run(states, 0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        states = run(states, i + 1)
        times.append(time.perf_counter() - start)
    return batch * time_ / statistics.median(times)


def engine_report(memory_configs: list[tuple[int, int, int]], time_configs: list[tuple[int, int, int]],
                  repeats: int, layouts: tuple[str, ...]) -> list[str]:
    from kdjax.engine.memory import device_capacity_bytes

    lines = ["", f"engine step, one member (student Embed+Dense d {STUDENT_WIDTH}, teacher d {TEACHER_WIDTH}); XLA's "
                 "memory analysis of the program step, per device:", "",
             "| layout | batch × time | vocab | method | logits temp GB | fused temp GB | fused / logits | logits total "
             "GB | fused total GB |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for layout, (batch, time_, vocab), method in itertools.product(layouts, memory_configs, ENGINE_METHODS):
        (u_temp, u_total), (f_temp, f_total) = (engine_memory(batch, time_, vocab, method, fused, layout)
                                                for fused in (False, True))
        lines.append(f"| {layout} | {batch} × {time_} | {vocab} | {method} | {u_temp / GB:.2f} | {f_temp / GB:.3f} | "
                     f"{f_temp / u_temp:.3f} | {u_total / GB:.2f} | {f_total / GB:.3f} |")
    if time_configs:
        capacity = device_capacity_bytes()
        lines += ["", f"engine step tokens/s, median of {repeats} after one warm-up (—: the logits path's step does not "
                      f"fit in the {capacity / GB:.0f} GB available):", "",
                  "| layout | batch × time | vocab | method | logits tokens/s | fused tokens/s | fused / logits |",
                  "|---|---|---:|---|---:|---:|---:|"]
        for layout, (batch, time_, vocab), method in itertools.product(layouts, time_configs, ENGINE_METHODS):
            devices = LAYOUTS[layout][0]
            fits = engine_memory(batch, time_, vocab, method, False, layout)[1] * devices < 0.8 * capacity
            unfused = (engine_tokens_per_second(batch, time_, vocab, method, False, layout, repeats)
                       if fits else None)
            fused = engine_tokens_per_second(batch, time_, vocab, method, True, layout, repeats)
            ratio = f"{fused / unfused:.2f}" if unfused else "—"
            lines.append(f"| {layout} | {batch} × {time_} | {vocab} | {method} | "
                         f"{f'{unfused:,.0f}' if unfused else '—'} | {fused:,.0f} | {ratio} |")
    return lines


def offline_report(configs: list[tuple[int, int, int]], ks: list[int], repeats: int) -> list[str]:
    """KD from the live teacher against `topk-kd` from a stored table, the fused step, one member."""
    if not configs:
        return []
    lines = ["", f"offline teacher: one member's fused step (student d {STUDENT_WIDTH}), KD from the live teacher "
                 f"(d {TEACHER_WIDTH}) against top-k KD from a stored table, tokens/s (median of {repeats}):", "",
             "| batch × time | vocab | KD, live teacher | top-k KD, stored | stored / live | table bytes per token |",
             "|---|---:|---:|---|---:|---|"]
    for batch, time_, vocab in configs:
        live = engine_tokens_per_second(batch, time_, vocab, "kd", True, "1 device", repeats)
        stored = {k: engine_tokens_per_second(batch, time_, vocab, "topk-kd", True, "1 device", repeats, k)
                  for k in ks}
        lines.append(f"| {batch} × {time_} | {vocab} | {live:,.0f} | "
                     + ", ".join(f"k {k}: {v:,.0f}" for k, v in stored.items()) + " | "
                     + ", ".join(f"{v / live:.2f}" for v in stored.values()) + " | "
                     + ", ".join(f"{k * 6}" for k in ks) + " |")
    return lines


def _engine_config(text: str) -> tuple[int, int, int]:
    try:
        shape, vocab = text.split(":")
        batch, time_ = shape.split("x")
        return int(batch), int(time_), int(vocab)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxTIME:VOCAB (e.g. 8x512:128256), got {text!r}") from None


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
    parser.add_argument("--engine", type=_engine_config, nargs="*", default=[(8, 512, 128_256)],
                        help="engine-step configurations whose memory to analyse, BATCHxTIME:VOCAB (none: skip)")
    parser.add_argument("--engine-time", type=_engine_config, nargs="*", default=[(8, 512, 32_000), (8, 512, 128_256)],
                        help="engine-step configurations to time, BATCHxTIME:VOCAB (none: skip)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[HIDDEN],
                        help=f"hidden sizes of the memory rows (default {HIDDEN}; times use {HIDDEN})")
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=["1 device"],
                        help="engine rows on one device, and/or on 4 with parameters sharded (fsdp; on a CPU host "
                             "the command reruns itself with 4 simulated devices)")
    parser.add_argument("--offline", type=_engine_config, nargs="*", default=[(8, 512, 32_000), (8, 512, 128_256)],
                        help="configurations for the offline rows, BATCHxTIME:VOCAB (none: skip)")
    parser.add_argument("--offline-k", type=int, nargs="+", default=[8, 64], help="top-k tables of the offline rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the tables here")
    args = parser.parse_args(argv)
    devices = max(LAYOUTS[layout][0] for layout in args.layouts)
    if devices > jax.device_count() and jax.default_backend() == "cpu" and argv is None:
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        os.execve(sys.executable, [sys.executable, "-m", "bench.lm", *sys.argv[1:]], {**os.environ, "XLA_FLAGS": flags})
    text = "\n".join([report(args.time, args.repeats, args.memory, tuple(args.hidden)),
                      *engine_report(args.engine, args.engine_time, args.repeats, tuple(args.layouts)),
                      *offline_report(args.offline, args.offline_k, args.repeats)])
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
