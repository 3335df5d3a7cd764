"""How fast CIFAR-10 reaches the device: load time and images/s per loader.

    python -m bench.data --data-dir PATH [--epochs 2] [--batch-size 128]

Prints the time to load the local copy, then images/s delivered to the device (each
batch waited on, as a train step would) for the resident loader with images normalised
once up front, resident with uint8 normalised per batch, and streaming.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax

from kdjax.data import ResidentLoader, StreamingLoader, load_cifar10


def _images_per_second(loader, epochs: int) -> float:
    for batch in loader.epoch(0):  # warm-up: compilation and first transfers
        jax.block_until_ready(batch)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for batch in loader.epoch(epoch):
            jax.block_until_ready(batch)
    return epochs * loader.num_examples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a local CIFAR-10 copy (folder or archive)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (after one warm-up epoch)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch")
    args = parser.parse_args(argv)

    data = load_cifar10(args.data_dir)
    print(f"machine: {platform.machine()}, {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"load {data.origin}: {data.load_seconds:.2f} s for {len(data.train) + len(data.test):,} images")
    key = jax.random.key(0)
    loaders = {
        "resident, normalised once": lambda: ResidentLoader(data.train, args.batch_size, key, normalize_once=True),
        "resident, uint8 per batch": lambda: ResidentLoader(data.train, args.batch_size, key, normalize_once=False),
        "streaming (host uint8)": lambda: StreamingLoader(data.train, args.batch_size, key),
    }
    for name, make in loaders.items():
        start = time.perf_counter()
        loader = make()
        jax.block_until_ready(getattr(loader, "images", None))
        setup = time.perf_counter() - start
        rate = _images_per_second(loader, args.epochs)
        print(f"{name:28s} {rate:12,.0f} images/s   (setup {setup:.2f} s)")


if __name__ == "__main__":
    main()
