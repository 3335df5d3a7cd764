"""The run as a library function: a config and an in-memory data set in, the run's results out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdjax.config import ConfigError, DataSpec, ExperimentConfig
from kdjax.data import from_arrays
from kdjax.run import train_and_evaluate
from kdjax.train import Settings


def _data(classes: int = 4):
    rng = np.random.default_rng(0)
    labels = np.arange(160) % classes
    return from_arrays(rng.integers(0, 256, (128, 8, 8, 3), dtype=np.uint8), labels[:128],
                       rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), labels[128:], name="mine")


@pytest.mark.slow
def test_a_run_takes_a_config_and_a_dataset_and_returns_its_results(tmp_path):
    config = ExperimentConfig(name="kd", teacher="resnet8", student="resnet8",
                              training=Settings(epochs=1, batch_size=32), seeds=(0, 1), checkpoint_dir=str(tmp_path / "ck"), output_dir=str(tmp_path / "runs"))
    lines = []
    result = train_and_evaluate(config, _data(), log=lines.append)
    assert [r.member.label for r in result.students] == ["kd[aux_weight=0.25, ce_weight=0.75, temperature=2, "
                                                         f"seed={seed}]" for seed in (0, 1)]
    assert result.teacher[0].network == "resnet8" and result.config.data.normalization is not None  # the data's own
    rows = [json.loads(line) for line in (result.run_dir / "members.jsonl").read_text().splitlines()]
    assert [row["test_accuracy"] for row in rows] == [r.test_accuracy for r in result.teacher + result.students]
    assert any(line.startswith("teacher cache: logits for 128 images") for line in lines)
    again = train_and_evaluate(config, _data(), log=lines.append)  # restored, not retrained
    assert [r.test_accuracy for r in again.students] == [r.test_accuracy for r in result.students]
    assert sum("already trained" in line for line in lines) == 2


def test_a_stated_class_count_must_match_the_data_given():
    config = ExperimentConfig(name="baseline", student="resnet8", data=DataSpec(num_classes=10))
    with pytest.raises(ConfigError, match="--num-classes 10: the data set has 4 classes"):
        train_and_evaluate(config, _data(), log=lambda _: None)
