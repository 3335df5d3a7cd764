"""Where a CE train step's time goes, against its compute and memory-traffic floors.

    python -m bench.profile [--repeats 5] [--out experiments/PROFILE.md]

For the tutorial's teacher and student at batch 128 and the zoo's resnet20 and resnet56 at
the benchmarks' batch 64, through the engine's own step:

* the layer list, read off the model's jaxpr (every convolution and dense layer with its
  shapes), and the step's matmul work: forward, input gradient and kernel gradient of each
  layer, less the images' gradient, which nothing needs;
* the compute floor: that work at the GFLOP/s of a 2048^3 float32 matmul on this machine;
* the memory floor: the bytes XLA's cost analysis says the compiled step reads and writes,
  at the GB/s of a large in-place element-wise pass on this machine;
* the measured step (median of `--repeats` windows) and XLA's per-op profile of it (a
  `jax.profiler` trace): the ops that take the most time, in ms per step. On CPU, convolutions
  and dots run through YNNPACK on their own threads and are not listed by name; the step's
  time less the listed ops is theirs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

from kdjax.cpu import use_fast_cpu_kernels

import jax
import jax.numpy as jnp
import numpy as np

from bench.__main__ import cpu_model
from bench.common import batch_size, synthetic_split
from bench.kdjax_side import engine_program
from kdjax.data import Split
from kdjax import zoo
from kdjax.network import Network
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher

NETWORKS: dict[str, Callable[[], Network]] = {"teacher": tutorial_teacher, "student": tutorial_student,
                                              "resnet20": lambda: zoo.network("resnet20"),
                                              "resnet56": lambda: zoo.network("resnet56")}
STEPS = {"teacher": 2, "resnet56": 3, "resnet20": 8}  # steps per timed window (default 20)


def _equations(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in it (custom gradients; of a `cond`, the first branch
    only: `lax.platform_dependent` puts the same layer in one branch per platform)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for name, value in eqn.params.items():
            subs = value if isinstance(value, (list, tuple)) else [value]
            if eqn.primitive.name == "cond" and name == "branches":
                subs = subs[:1]
            for sub in subs:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def layers(network: Network, batch: int) -> list[dict]:
    """Convolutions and dense layers of one forward pass at `batch`, in order, with forward GFLOP.

    A convolution under `lax.platform_dependent` is counted in its first branch only.
    """
    params, state = network.init(jax.random.key(0))
    images = jnp.zeros((batch, 32, 32, 3))
    jaxpr = jax.make_jaxpr(lambda p, x: network.forward(p, state, x, train=False))(params, images).jaxpr
    found = []
    for eqn in _equations(jaxpr):
        name = eqn.primitive.name
        if name not in ("conv_general_dilated", "dot_general"):
            continue
        lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
        out = eqn.outvars[0].aval.shape
        if name == "conv_general_dilated":
            macs = int(np.prod(out)) * int(np.prod(rhs[:-1]))  # HWIO kernel: every output sums kh*kw*in products
        else:
            (contract, _), _ = eqn.params["dimension_numbers"]
            macs = int(np.prod(out)) * int(np.prod([lhs[d] for d in contract]))
        entry = {"op": "conv" if name == "conv_general_dilated" else "dense", "input": tuple(lhs),
                 "kernel": tuple(rhs), "output": tuple(out), "gflop": 2 * macs / 1e9}
        found.append(entry)
    return found


def step_gflop(layer_list: list[dict]) -> float:
    """Forward, input-gradient and kernel-gradient passes of every layer, less the images' gradient."""
    return 3 * sum(layer["gflop"] for layer in layer_list) - layer_list[0]["gflop"]


def _windows(run: Callable[[], object], repeats: int) -> float:
    """Median wall ms of `run()` (which must block) after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def matmul_gflops(repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    matmul = jax.jit(lambda m: m @ m)
    return 2 * 2048**3 / 1e6 / _windows(lambda: matmul(a).block_until_ready(), repeats)


def bandwidth_gbs(repeats: int) -> float:
    """GB/s of `x * 2 + 1` over 256 MB, in place (donated), so that no fresh page is touched."""
    box = {"x": jnp.zeros((64 * 2**20,), jnp.float32)}
    scale = jax.jit(lambda x: x * 2.0 + 1.0, donate_argnums=0)

    def run():
        box["x"] = scale(box["x"])
        box["x"].block_until_ready()

    return 2 * box["x"].nbytes / 1e6 / _windows(run, repeats)


def _compiled_step(name: str):
    """The engine's compiled one-member CE step for `name` and arguments that run it, on the device."""
    split = Split(*synthetic_split(2048, 0))
    step, states, (orders, epoch, *rest) = engine_program(f"{name}_ce", split, None, False)
    args = (orders, epoch, jax.device_put(np.int32(0)), *rest)
    return step.lower(states, *args).compile(), states, args


def measure_step(name: str, repeats: int) -> dict:
    """Median step ms, XLA's bytes accessed and the ops that take the most time, for `name`'s CE step."""
    compiled, states, args = _compiled_step(name)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    steps = STEPS.get(name, 20)
    box = {"states": states}

    def window():
        for _ in range(steps):
            box["states"], _ = compiled(box["states"], *args)
        jax.block_until_ready(box["states"])

    ms = _windows(window, repeats) / steps
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            window()
        (trace_file,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(trace_file))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.Counter()
    for event in events:  # XLA's ops are the complete events that are neither Python frames nor runtime spans
        if event.get("ph") == "X" and not event["name"].startswith(("$", "ThunkExecutor", "PjitFunction", "Common")):
            per_op[event["name"]] += event["dur"] / 1000 / steps
    return {"ms": ms, "bytes": float(cost.get("bytes accessed", 0.0)), "ops": per_op.most_common(12)}


def report(repeats: int, networks: Sequence[str] = tuple(NETWORKS)) -> str:
    peak, bandwidth = matmul_gflops(repeats), bandwidth_gbs(repeats)
    lines = [f"Machine: {cpu_model()}, {jax.devices()[0].device_kind}, jax {jax.__version__}. float32 matmul "
             f"2048^3: {peak:.0f} GFLOP/s; in-place element-wise pass over 256 MB: {bandwidth:.1f} GB/s.", ""]
    for name in networks:
        layer_list = layers(NETWORKS[name](), batch_size(f"{name}_ce"))
        gflop = step_gflop(layer_list)
        step = measure_step(name, repeats)
        compute_ms, memory_ms = gflop / peak * 1000, step["bytes"] / 1e9 / bandwidth * 1000
        bound = "compute" if compute_ms >= memory_ms else "memory traffic"
        lines += [f"## {name}: CE train step {step['ms']:.1f} ms at batch {batch_size(f'{name}_ce')}", "",
                  f"- matmul work {gflop:.2f} GFLOP ({gflop / step['ms'] * 1000:.0f} GFLOP/s achieved): compute floor "
                  f"{compute_ms:.1f} ms",
                  f"- XLA's cost analysis: {step['bytes'] / 1e6:,.0f} MB read and written: memory floor "
                  f"{memory_ms:.1f} ms",
                  f"- bound by {bound}; the step takes {step['ms'] / max(compute_ms, memory_ms):.1f}x the higher floor",
                  "", "| layer | input | kernel | output | forward GFLOP |", "|---|---|---|---|---:|"]
        lines += [f"| {layer['op']} | {layer['input']} | {layer['kernel']} | {layer['output']} | {layer['gflop']:.3f} |"
                  for layer in layer_list]
        listed = sum(ms for _, ms in step["ops"])
        lines += ["", f"Ops taking the most time (XLA per-op profile, ms per step; these {len(step['ops'])} sum to "
                  f"{listed:.1f} ms of {step['ms']:.1f}):", "", "| op | ms |", "|---|---:|"]
        lines += [f"| `{op}` | {ms:.2f} |" for op, ms in step["ops"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per figure (median reported)")
    parser.add_argument("--out", default=None, help="also write the report to this Markdown file")
    parser.add_argument("--networks", type=lambda text: text.split(","), default=list(NETWORKS),
                        help=f"comma-separated, from {', '.join(NETWORKS)} (default: all)")
    args = parser.parse_args(argv)
    text = report(args.repeats, args.networks)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(f"# CE train step profile\n\n`python -m bench.profile --repeats "
                                          f"{args.repeats}`\n\n{text}")


if __name__ == "__main__":
    use_fast_cpu_kernels()  # before JAX starts its backends
    main()
