"""Distil a small linen ResNet with BatchNorm into a small CNN, neither of them kdjax's, through kdjax's engine.

    python examples/resnet_to_cnn.py --data-dir DIR [--epochs 5] [--train-size N]
    python examples/resnet_to_cnn.py --synthetic --epochs 1 --train-size 256   # a smoke run, no data needed

The teacher trains with cross-entropy; then the CNN trains twice from the same seeds, with CE
alone and with CE + a FitNets hint from the ResNet's second stage, the hint's 3x3-conv
regressor built by the method from the two feature shapes. Features are read by module path
(`kdjax.features`): neither model was edited for distillation. The BatchNorm statistics are the
networks' state: updated in the students' training steps, frozen in the teacher.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
from flax import linen as nn

from kdjax.checkpoint import RunCheckpoints
from kdjax.data import Dataset, Split, load_cifar10
from kdjax.engine import Member, Settings, model_variables, train_members
from kdjax.network import Network, linen_network
from kdjax.teacher import Teacher


class ResidualBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, name=name)  # noqa: E731
        y = nn.relu(norm("bn1")(nn.Conv(self.features, (3, 3), use_bias=False, name="conv1")(x)))
        y = norm("bn2")(nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y))
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1), name="project")(x)
        return nn.relu(y + skip)


class SmallResNet(nn.Module):
    """Two stages of BatchNorm residual blocks: 32x32x16, then 16x16x32 (`stage2`), then a linear head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(nn.Conv(16, (3, 3), name="stem")(x)))
        x = ResidualBlock(16, name="stage1")(x, train)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = ResidualBlock(32, name="stage2")(x, train)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


class SmallCNN(nn.Module):
    """conv 16 -> pool -> conv 16 (`block2`) -> global average -> linear."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3), name="block1")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="block2")(x))
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def teacher_network() -> Network:
    return linen_network(SmallResNet(), input_shape=(32, 32, 3), roles={"feature_map": "stage2"})


def student_network() -> Network:
    return linen_network(SmallCNN(), input_shape=(32, 32, 3), roles={"feature_map": "block2"}, train_argument=None)


def synthetic_data(train: int, test: int) -> Dataset:
    """Random images whose label is the brightest colour channel: learnable, needs no download."""
    rng = np.random.default_rng(0)

    def split(n):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = images.reshape(n, -1, 3).mean(axis=1).argmax(axis=1).astype(np.int32)
        return Split(images, labels)

    return Dataset(split(train), split(test), "synthetic", 0.0)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="a local CIFAR-10 copy (default: tensorflow-datasets)")
    parser.add_argument("--synthetic", action="store_true", help="random data instead of CIFAR-10")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--workdir", default=None, help="checkpoints go here (default: a temporary folder)")
    return parser.parse_args(argv)


def distil(student: Network, argv=None) -> dict[str, float]:
    """Train the ResNet teacher, then `student` with CE and with CE + hint; returns mean test accuracy per method."""
    args = parse(argv)
    if args.synthetic:
        data = synthetic_data(args.train_size or 512, 256)
    else:
        data = load_cifar10(args.data_dir).subset(args.train_size, None)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = Settings(epochs=args.epochs, batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.workdir or tmp)

        def checkpoints(kind):
            return lambda members: RunCheckpoints(root / kind / members[0].name, {"example": kind})

        teacher = teacher_network()
        (program,) = train_members([Member.of("ce", 0)], teacher, data.train, data.test, settings,
                                   checkpoints(f"teacher-{teacher.name}"), desc="teacher")
        print(f"teacher {teacher.name}: {program.results[0].test_accuracy:.2f}%")
        teacher_variables = model_variables(program.states)
        members = [Member.of(method, seed) for method in ("ce", "hint") for seed in seeds]
        programs = train_members(members, student, data.train, data.test, settings,
                                 checkpoints(f"student-{student.name}"), teacher=Teacher(teacher, *teacher_variables),
                                 desc="student")
    accuracy = {}
    for program in programs:
        values = [r.test_accuracy for r in program.results]
        accuracy[program.results[0].member.name] = float(np.mean(values))
        print(f"{student.name} {program.results[0].member.name}: {', '.join(f'{v:.2f}%' for v in values)}")
    return accuracy


if __name__ == "__main__":
    distil(student_network())
