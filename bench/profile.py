"""Where a train step's time goes, against the arithmetic floor.

    python -m bench.profile [--repeats 5] [--out experiments/PROFILE.md]

For every 3x3 conv of the teacher and the student at batch 128: the forward pass, the
input gradient and the kernel gradient in both forms `kdjax.conv` chooses between (XLA's
own and the dy-side one), each fed by a bias-add + ReLU as in the models, in ms and
GFLOP/s. Then the whole CE train step against its floor: the step's matmul FLOPs (forward,
input and weight gradients of every conv and dense layer; elementwise work, pooling and
Adam not counted) at the GFLOP/s of a 2048^3 float32 matmul.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax

from kdjax.cpu import use_fast_cpu_kernels
import jax.numpy as jnp
from jax import lax

from bench.common import BATCH
from kdjax.conv import _kernel_grad_as_dy_conv, add_channel_bias
from kdjax.models import DeepNN, LightNN
from kdjax.train import LossConfig, create_train_state, make_train_step

NHWC = ("NHWC", "HWIO", "NHWC")
SAME = ((1, 1), (1, 1))
# (spatial size, in channels, out channels) of each 3x3 conv, in forward order.
CONVS = {"teacher": [(32, 3, 128), (32, 128, 64), (16, 64, 64), (16, 64, 32)],
         "student": [(32, 3, 16), (32, 16, 16), (16, 16, 32), (16, 32, 16)]}
DENSES = {"teacher": [(2048, 512), (512, 10)], "student": [(1024, 256), (256, 10)]}
MODELS = {"teacher": DeepNN, "student": LightNN}


def conv_gflop(size: int, c_in: int, c_out: int) -> float:
    return 2 * BATCH * size * size * 9 * c_in * c_out / 1e9


def step_gflop(name: str) -> float:
    """Three passes (forward, input grad, weight grad) per layer, less the images' gradient."""
    convs = [conv_gflop(*conv) for conv in CONVS[name]]
    denses = [2 * BATCH * n_in * n_out / 1e9 for n_in, n_out in DENSES[name]]
    return 3 * sum(convs + denses) - convs[0]


def median_ms(fn: Callable, *args, repeats: int) -> float:
    """Median wall ms of a jitted `fn(*args)` after one compile-and-run."""
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def conv_rows(size: int, c_in: int, c_out: int, repeats: int) -> dict[str, float]:
    keys = jax.random.split(jax.random.key(0), 4)
    pre_activation = jax.random.normal(keys[0], (BATCH, size, size, c_in))
    bias = jax.random.normal(keys[1], (c_in,))
    kernel = jax.random.normal(keys[2], (3, 3, c_in, c_out))
    dy = jax.random.normal(keys[3], (BATCH, size, size, c_out))

    def conv(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), SAME, dimension_numbers=NHWC)

    def activation(z, b):
        return jax.nn.relu(add_channel_bias(z, b))

    def input_grad(z, b, k, g):
        return jax.vjp(lambda x: conv(x, k), activation(z, b))[1](g)[0]

    def kernel_grad_xla(z, b, k, g):
        x = activation(z, b)
        return jax.vjp(lambda k_: conv(x, k_), k)[1](g)[0]

    def kernel_grad_dy_side(z, b, k, g):
        return _kernel_grad_as_dy_conv(activation(z, b), g, (3, 3), SAME)

    args = (pre_activation, bias, kernel, dy)
    return {"gflop": conv_gflop(size, c_in, c_out),
            "forward": median_ms(lambda z, b, k: conv(activation(z, b), k), *args[:3], repeats=repeats),
            "input_grad": median_ms(input_grad, *args, repeats=repeats),
            "kernel_grad_xla": median_ms(kernel_grad_xla, *args, repeats=repeats),
            "kernel_grad_dy_side": median_ms(kernel_grad_dy_side, *args, repeats=repeats)}


def step_ms(name: str, repeats: int) -> float:
    state = create_train_state(MODELS[name](), jax.random.key(0))
    step = make_train_step(LossConfig("ce"))
    batch = {"image": jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3)),
             "label": jnp.arange(BATCH, dtype=jnp.int32) % 10,
             "mask": jnp.ones(BATCH, bool), "index": jnp.arange(BATCH)}
    compiled = step.lower(state, batch, jax.random.key(2), None).compile()
    box = {"state": state}

    def run():
        box["state"], _ = compiled(box["state"], batch, jax.random.key(2), None)
        return box["state"]

    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def matmul_gflops(repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    return 2 * 2048**3 / 1e9 / (median_ms(lambda m: m @ m, a, repeats=repeats) / 1000)


def report(repeats: int) -> str:
    peak = matmul_gflops(repeats)
    machine = f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
    lines = [f"machine: {machine}; float32 matmul 2048^3: {peak:.0f} GFLOP/s", ""]
    for name, convs in CONVS.items():
        ms, gflop = step_ms(name, repeats), step_gflop(name)
        title = (f"## {name}: CE train step {ms:.0f} ms for {gflop:.1f} GFLOP of matmul work "
                 f"({gflop / ms * 1000:.0f} GFLOP/s); floor at {peak:.0f} GFLOP/s: {gflop / peak * 1000:.0f} ms")
        header = ("| conv (HxW, in->out) | GFLOP per pass | forward ms | input grad ms | "
                  "kernel grad ms, XLA form | kernel grad ms, dy-side form | used |")
        lines += [title, "", header, "|---|---:|---:|---:|---:|---:|---|"]
        for size, c_in, c_out in convs:
            row = conv_rows(size, c_in, c_out, repeats)
            used = "dy-side" if c_out <= c_in else "XLA"
            lines.append(f"| {size}x{size}, {c_in}->{c_out} | {row['gflop']:.2f} | {row['forward']:.1f} | "
                         f"{row['input_grad']:.1f} | {row['kernel_grad_xla']:.1f} | "
                         f"{row['kernel_grad_dy_side']:.1f} | {used} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    use_fast_cpu_kernels()  # before JAX starts its backends
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--out", default=None, help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    text = report(args.repeats)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(f"`python -m bench.profile --repeats {args.repeats}`\n\n{text}")


if __name__ == "__main__":
    main()
