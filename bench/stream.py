"""Streamed input: image-folder throughput against torchvision, host memory over a large memory map, and the
engine's step fed by streaming against the resident path.

    python -m bench.stream make-folder DIR [--images 20000]
    python -m bench.stream throughput DIR [--workers 2] [--batches 60] [--torch-python PYTHON] [--tfds DATA_DIR]
    python -m bench.stream memory FILE [--gigabytes 10] [--batches 400]
    python -m bench.stream step --data-dir CIFAR [--train-size 10000] [--student resnet20]
    python -m bench.stream imagenet-step DIR [--batches 10] [--batch-size 32] [--workers 2]

`throughput` reads the training view (RandomResizedCrop(224) + flip) of DIR's train/ folder in batches of 128:
kdjax's `StreamingLoader` (grain workers; to NumPy on the host, then also to the device), against torchvision's
`ImageFolder` + `DataLoader` with the same transforms and the same number of workers, as uint8 tensors
(`PILToTensor`: no float work) and as the usual `ToTensor()` + `Normalize`. It runs the torchvision side in
`--torch-python` (an interpreter with torch and torchvision). Images/s over the batches after the first (workers
started), and the first batch's wait. With `--tfds DATA_DIR`, kdjax also reads the same files stored as a tfds
data set of array_record files (`kdjax.data.records.store_image_folder`, written there first if absent: its time
is reported).

`memory` writes FILE, an uncompressed .npz of 64x64x3 uint8 images (`--gigabytes` in all), loads it with
`kdjax.data.load_npz` (memory-mapped) and streams `--batches` batches of 256 in a shuffled order, sampling the
process's anonymous and file-backed resident memory (`/proc/self/status`) after each.

`step` trains `--student` with CE on CIFAR-10 for two epochs, resident then streamed (crop + flip on the device),
and reports the second epoch's images/s for each (the first holds compilation). `imagenet-step` times ResNet-18's
CE step at 224 pixels fed from DIR's JPEGs (streamed, decoded by `--workers` processes) against a resident array.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
import zipfile

import numpy as np

from bench.__main__ import cpu_model

SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (400, 500), (281, 500))  # (h, w), ImageNet's commonest
BATCH = 128


def make_folder(root: pathlib.Path, images: int, classes: int = 100, seed: int = 0) -> None:
    """`root/train/<class>/*.JPEG` and `root/val/<class>/*.JPEG` (a tenth as many): smooth random scenes with
    texture at ImageNet's usual sizes, JPEG quality 90 (about 100 KB each, as ImageNet's are)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", max(classes, images // 10))):
        for index in range(count):
            folder = root / split / f"n{index % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            height, width = SIZES[rng.integers(len(SIZES))]
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                             Image.BICUBIC)
            pixels = np.asarray(coarse, np.int16) + rng.normal(0, 10, (height, width, 3)).astype(np.int16)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index:07d}.JPEG", quality=90)


def kdjax_throughput(split, workers: int, batches: int) -> dict:
    """Images/s of `StreamingLoader` reading the training `split` (image files or records) to the host and to
    the device."""
    import jax

    from kdjax.data.stream import StreamingLoader

    out = {}
    for where in ("host", "device"):
        loader = StreamingLoader(split, BATCH, jax.random.split(jax.random.key(0), 1), workers=workers)
        stream = loader.host_batches(0) if where == "host" else loader.epoch(0)
        start = time.perf_counter()
        jax.block_until_ready(next(stream))
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches - 1):
            jax.block_until_ready(next(stream))
        out[where] = {"first_batch_s": first, "images_per_s": (batches - 1) * BATCH / (time.perf_counter() - start)}
        stream.close()
    return out


def records_throughput(root: pathlib.Path, data_dir: pathlib.Path, workers: int, batches: int,
                       name: str = "bench_folder") -> dict:
    """`kdjax_throughput` of the folder at `root` stored as the tfds data set `name` in `data_dir` (written first
    where absent: `store_seconds`)."""
    from kdjax.data.records import load_tfds, store_image_folder
    from kdjax.data.tfds_source import is_tfds_dir

    start = time.perf_counter()
    if not is_tfds_dir(data_dir, name):
        store_image_folder(root, data_dir, name)
    stored = time.perf_counter() - start
    return {"store_seconds": stored, **kdjax_throughput(load_tfds(name, data_dir).train, workers, batches)}


TORCH_SIDE = r"""
import json, sys, time, torch
from torchvision import datasets, transforms
root, workers, batches, variant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tail = [transforms.PILToTensor()] if variant == "uint8" else [
    transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
view = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *tail])
torch.set_num_threads(1)
loader = torch.utils.data.DataLoader(datasets.ImageFolder(f"{root}/train", view), batch_size=128, shuffle=True,
                                     num_workers=workers, drop_last=True)
stream = iter(loader)
start = time.perf_counter(); next(stream); first = time.perf_counter() - start
start = time.perf_counter()
for _ in range(batches - 1):
    next(stream)
print(json.dumps({"first_batch_s": first, "images_per_s": (batches - 1) * 128 / (time.perf_counter() - start),
                  "torch": torch.__version__}))
"""


def torch_throughput(python: str, root: pathlib.Path, workers: int, batches: int, variant: str) -> dict:
    done = subprocess.run([python, "-c", TORCH_SIDE, str(root), str(workers), str(batches), variant],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_npz(path: pathlib.Path, gigabytes: float, side: int = 64) -> int:
    """An uncompressed .npz of `[n, side, side, 3]` uint8 train images (and 1,000 test ones), written a chunk at a
    time; returns n."""
    row = side * side * 3
    n = int(gigabytes * 1e9) // row
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, count in (("x_train", n), ("x_test", 1000)):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {"descr": "|u1", "fortran_order": False,
                                                              "shape": (count, side, side, 3)})
                pattern = np.arange(row, dtype=np.uint8)  # the pixels do not matter, their bytes on disk do
                for start in range(0, count, 8192):
                    member.write(np.broadcast_to(pattern, (min(8192, count - start), row)).tobytes())
        for name, count in (("y_train", n), ("y_test", 1000)):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, (np.arange(count) % 10).astype(np.int32))
    return n


def _status_kib(field: str) -> int:
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1])


def memory(path: pathlib.Path, gigabytes: float, batches: int) -> dict:
    import jax

    from kdjax.data import load_npz
    from kdjax.data.stream import StreamingLoader, choose_loader
    from kdjax.engine.memory import device_capacity_bytes

    if not path.exists():
        start = time.perf_counter()
        write_npz(path, gigabytes)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - start:.0f} s")
    before = _status_kib("RssAnon")
    data = load_npz(path)
    loader_choice = choose_loader(data.train, "auto", device_capacity_bytes())
    loader = StreamingLoader(data.train, 256, jax.random.split(jax.random.key(0), 1), workers=0)
    anon, files = [], []
    start = time.perf_counter()
    for number, batch in enumerate(loader.epoch(0)):
        jax.block_until_ready(batch)
        anon.append(_status_kib("RssAnon"))
        files.append(_status_kib("RssFile"))
        if number + 1 == batches:
            break
    return {"array_gb": data.train.inputs.nbytes / 1e9, "images": len(data.train), "batches": len(anon),
            "seconds": time.perf_counter() - start, "anon_rss_mb_before_load": before / 1024,
            "anon_rss_mb_max": max(anon) / 1024, "anon_rss_mb_last": anon[-1] / 1024,
            "file_rss_mb_max": max(files) / 1024, "auto_choice": " ".join(loader_choice)}


def step(data_dir: str, train_size: int, student: str) -> dict:
    import tempfile

    from kdjax.checkpoint import RunCheckpoints
    from kdjax.data import load_dataset
    from kdjax.engine import Member, Settings, train_members
    from kdjax.run import network as zoo_network

    data = load_dataset("cifar10", data_dir).subset(train_size, 1000)
    network = zoo_network(student, data)
    out = {}
    for loader in ("resident", "streaming"):
        settings = Settings(epochs=2, batch_size=64, augment="crop-flip", data_loader=loader, save_every_steps=0,
                            log_every_steps=0)
        with tempfile.TemporaryDirectory() as tmp:
            (program,) = train_members([Member.of("ce", 0)], network, data.train, data.test, settings,
                                       lambda chunk: RunCheckpoints(pathlib.Path(tmp) / "ce", {"bench": loader}),
                                       log=lambda line: None)
        out[loader] = program.results[0].history[-1]["images_per_second"]
    out["ratio_streaming_over_resident_time"] = out["resident"] / out["streaming"]
    return out


def imagenet_step(root: pathlib.Path, batches: int, batch_size: int, workers: int) -> dict:
    """ResNet-18's CE training step at 224 pixels (SGD, as imagenet-kd), fed from DIR's train/ folder (streamed,
    decoded and cropped by `workers` grain processes) and from a resident array of the same shape: images/s of each
    over `batches` steps after the first (compiled) one."""
    import jax
    import jax.numpy as jnp

    from kdjax import zoo
    from kdjax.data import Split
    from kdjax.data.images import load_image_folder
    from kdjax.engine.step import ProgramSpec, init_states, jitted_step
    from kdjax.engine.members import stack_hyperparameters
    from kdjax.engine import Member
    from kdjax.data.pipeline import epoch_order
    from kdjax.data.stream import StreamingLoader
    from kdjax.parallel import batch_mesh
    from kdjax.train import build_objective
    from kdjax import methods
    import optax

    files = load_image_folder(root).train
    network = zoo.network("resnet18", num_classes=1000, input_shape=(224, 224, 3))
    objective = build_objective(methods.get("ce"), network)
    mesh = batch_mesh(1)
    keys = jnp.stack([jax.random.key(1)])
    member = [Member.of("ce", 0)]
    hp = stack_hyperparameters(member)
    out = {}
    resident = Split(np.random.default_rng(0).integers(0, 256, (batch_size * 4, 224, 224, 3), dtype=np.uint8),
                     files.labels[:batch_size * 4])
    for feed in ("resident", "streamed"):
        split = files if feed == "streamed" else resident
        spec = ProgramSpec(objective, batch_size, len(split), "none", True, mesh, streamed=feed == "streamed")
        step = jitted_step(spec)
        states = init_states(objective, [0], optax.sgd(0.2, momentum=0.9))
        if feed == "streamed":
            loader = StreamingLoader(split, batch_size, keys, mesh=mesh, workers=workers)
            stream, orders = loader.epoch(0), jnp.zeros((1,), jnp.int32)
            data_for = lambda index: next(stream)  # noqa: E731
        else:
            data = jax.device_put(split.arrays())
            orders = jnp.stack([epoch_order(keys[0], 0, len(split), batch_size)])
            data_for = lambda index: data  # noqa: E731
        rates = []
        for index in range(batches + 1):
            start = time.perf_counter()
            batch = data_for(index)
            states, metrics = step(states, orders, np.int32(0), np.int32(index % 4), batch, None, keys, keys, hp)
            jax.block_until_ready(metrics)
            if index:
                rates.append(batch_size / (time.perf_counter() - start))
        out[feed] = float(np.median(rates))
    out["streamed_over_resident_time"] = out["resident"] / out["streamed"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-folder")
    make.add_argument("root", type=pathlib.Path)
    make.add_argument("--images", type=int, default=20_000)
    rate = commands.add_parser("throughput")
    rate.add_argument("root", type=pathlib.Path)
    rate.add_argument("--workers", type=int, default=2)
    rate.add_argument("--batches", type=int, default=60)
    rate.add_argument("--torch-python", default=sys.executable)
    rate.add_argument("--tfds", type=pathlib.Path, help="also read the folder stored as records in this tfds data dir")
    mem = commands.add_parser("memory")
    mem.add_argument("path", type=pathlib.Path)
    mem.add_argument("--gigabytes", type=float, default=10.0)
    mem.add_argument("--batches", type=int, default=400)
    big = commands.add_parser("imagenet-step")
    big.add_argument("root", type=pathlib.Path)
    big.add_argument("--batches", type=int, default=10)
    big.add_argument("--batch-size", type=int, default=32)
    big.add_argument("--workers", type=int, default=2)
    steps = commands.add_parser("step")
    steps.add_argument("--data-dir", required=True)
    steps.add_argument("--train-size", type=int, default=10_000)
    steps.add_argument("--student", default="resnet20")
    args = parser.parse_args(argv)
    print(f"host: {cpu_model()}")
    if args.command == "make-folder":
        start = time.perf_counter()
        make_folder(args.root, args.images)
        print(f"wrote {args.images:,} training images to {args.root} in {time.perf_counter() - start:.0f} s")
    elif args.command == "throughput":
        from kdjax.data.images import load_image_folder

        ours = {"files": kdjax_throughput(load_image_folder(args.root).train, args.workers, args.batches)}
        if args.tfds:
            ours["records"] = records_throughput(args.root, args.tfds, args.workers, args.batches)
        theirs = {variant: torch_throughput(args.torch_python, args.root, args.workers, args.batches, variant)
                  for variant in ("uint8", "float")}
        print(json.dumps({"workers": args.workers, "batches": args.batches, "kdjax": ours, "torchvision": theirs},
                         indent=1))
    elif args.command == "imagenet-step":
        print(json.dumps(imagenet_step(args.root, args.batches, args.batch_size, args.workers), indent=1))
    elif args.command == "memory":
        print(json.dumps(memory(args.path, args.gigabytes, args.batches), indent=1))
    else:
        print(json.dumps(step(args.data_dir, args.train_size, args.student), indent=1))


if __name__ == "__main__":
    main()
