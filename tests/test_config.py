"""Flags over a recipe over the defaults: what a command line resolves to, before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from kdjax.config import ConfigError
from kdjax.data import channel_statistics, from_arrays
from kdjax.experiments.common import parse_config
from kdjax.identity import Checkpoints, run_identity
from kdjax.run import with_recipe_warmup


def test_the_cifar_kd_recipe_sets_the_benchmarks_settings_and_flags_override_it():
    config = parse_config("kd", ["--recipe", "cifar-kd", "--teacher", "resnet56", "--student", "resnet20"])
    settings = config.settings()
    assert (settings.optimizer, settings.learning_rate, settings.momentum, settings.weight_decay) == \
        ("sgd", 0.05, 0.9, 5e-4)
    assert (settings.batch_size, settings.epochs, settings.schedule, settings.milestones, settings.augment) == \
        (64, 240, "step", (150, 180, 210), "crop-flip")
    assert config.data.normalize == "dataset"
    assert config.members()[0].hp == {"aux_weight": 0.9, "ce_weight": 0.1, "temperature": 4.0}
    mine = parse_config("kd", ["--recipe", "cifar-kd", "--epochs", "16", "--milestones", "10,12,14",
                               "--learning-rate", "0.1", "--temperature", "2", "--student", "shufflenetv2"])
    assert (mine.training.epochs, mine.training.milestones, mine.training.learning_rate) == (16, (10, 12, 14), 0.1)
    assert mine.members()[0].hp["temperature"] == 2.0 and mine.members()[0].hp["ce_weight"] == 0.1
    assert parse_config("kd", ["--recipe", "cifar-kd", "--student", "shufflenetv2"]).training.learning_rate == 0.01
    assert parse_config("kd", []).settings().optimizer == "adam"  # without a recipe: the tutorial's


def test_the_imagenet_kd_recipe_is_mdistillers_for_both_pairs():
    config = parse_config("methods", ["--recipe", "imagenet-kd", "--methods", "kd,dkd", "--dataset", "imagenet:/x"])
    settings = config.settings()
    assert (config.teacher, config.student, settings.optimizer, settings.learning_rate, settings.weight_decay,
            settings.batch_size, settings.epochs, settings.milestones) == \
        ("resnet34", "resnet18", "sgd", 0.2, 1e-4, 512, 100, (30, 60, 90))
    kd, dkd = (member.hp for member in config.members())
    assert kd == {"aux_weight": 0.5, "ce_weight": 0.5, "temperature": 1.0}
    assert (dkd["beta"], dkd["ce_weight"], dkd["temperature"]) == (0.5, 1.0, 1.0)
    mobile = parse_config("dkd", ["--recipe", "imagenet-kd", "--student", "mobilenetv1"])
    assert mobile.teacher == "resnet50" and mobile.members()[0].hp["beta"] == 2.0
    assert with_recipe_warmup(mobile, 1_281_167).members()[0].hp["warmup_steps"] == 2503  # one epoch at 512


def test_dkd_warms_up_over_a_twelfth_of_the_recipes_run_unless_told():
    config = parse_config("methods", ["--recipe", "cifar-kd", "--methods", "ce,dkd", "--epochs", "24"])
    resolved = with_recipe_warmup(config, 50_000)
    assert resolved.members()[1].hp["warmup_steps"] == 24 / 12 * 782
    told = with_recipe_warmup(parse_config("dkd", ["--recipe", "cifar-kd", "--warmup-steps", "7"]), 50_000)
    assert told.members()[0].hp["warmup_steps"] == 7
    assert with_recipe_warmup(parse_config("dkd", []), 50_000).members()[0].hp["warmup_steps"] == 391


def test_settings_added_later_leave_the_tutorials_identities_alone():
    """Runs and checkpoints written before optimisers, recipes and networks were flags keep their folders."""
    plain = parse_config("kd", [])
    assert not {"optimizer", "teacher", "recipe", "normalization", "method_defaults"} & set(run_identity(plain))
    assert run_identity(parse_config("kd", ["--optimizer", "sgd"]))["optimizer"] == "sgd"


def test_the_optimizer_and_its_schedule_are_part_of_a_checkpoints_identity():
    data = from_arrays(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), np.zeros((1, 4, 4, 3), np.uint8), [0])
    plain = Checkpoints(parse_config("kd", []), data, teacher=False).shared
    assert not {"optimizer", "schedule", "epochs"} & set(plain)
    cosine = Checkpoints(parse_config("kd", ["--optimizer", "sgd", "--schedule", "cosine", "--epochs", "7"]), data,
                         teacher=False).shared
    assert (cosine["optimizer"], cosine["schedule"], cosine["epochs"]) == ("sgd", "cosine", 7)


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "nope"], "--recipe: unknown recipe 'nope'; choose from cifar-kd"),
    (["--schedule", "step"], "--schedule step needs --milestones"),
    (["--schedule", "step", "--milestones", "5,3"], "--milestones must be increasing epochs > 0"),
    (["--nesterov"], "--nesterov needs --optimizer sgd"),
    (["--optimizer", "lamb"], "--optimizer must be one of adam, sgd"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--normalize", "cifar"], "--normalize must be one of auto, imagenet, cifar10, cifar100, dataset, subset, none"),
    (["--dataset", "imagenet:/data", "--data-loader", "resident"], "--data-loader resident: images decoded and "
     "cropped on the host as they are read, from image files or tfds records, are streamed"),
    (["--data-loader", "disk"], "--data-loader must be one of auto, resident, streaming, got 'disk'"),
    (["--stream-workers", "-1"], "--stream-workers must be >= 0, got -1"),
])
def test_bad_recipes_and_optimizer_settings_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        parse_config("kd", flags)


def test_channel_statistics_are_each_channels_mean_and_population_std():
    images = np.random.default_rng(0).integers(0, 256, (300, 4, 5, 2), dtype=np.uint8)
    mean, std = channel_statistics(images, chunk=7)
    pixels = images.reshape(-1, 2) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=0), atol=1e-6)
    as_floats = channel_statistics(images.astype(np.float32) / 255.0)  # float images are taken as given
    np.testing.assert_allclose(as_floats, (mean, std), atol=1e-6)
    with pytest.raises(ValueError, match="channel_statistics takes uint8 or float"):
        channel_statistics(images.astype(np.int16))


def test_each_commands_help_shows_the_defaults_it_runs_with():
    """lm runs its char-lm recipe: its --help says so, and the image commands keep the tutorial's."""
    from kdjax.experiments.flags import OneLineParser, add_flags

    def help_of(name: str) -> str:
        parser = OneLineParser(prog=name)
        add_flags(parser, name)
        return " ".join(parser.format_help().split())

    lm, kd = help_of("lm"), help_of("kd")
    for shown in ("base learning rate of Adam or SGD, before the schedule (default: 0.003)", "(split over the devices) (default: 32)",
                  "(default: causal_conv_128x5)", "(default: causal_conv_32x2)", "--window tokens (default: text)",
                  "--temperature HP_TEMPERATURE default per method: kd 1", "--ce-weight HP_CE_WEIGHT default per "
                  "method: kd 0.5, gkd 0.5"):
        assert shown in lm, shown
    assert "(default: deepnn)" not in lm and "(default: 0.001)" not in lm
    assert "base learning rate of Adam or SGD, before the schedule (default: 0.001)" in kd and "(default: deepnn)" in kd and "kd 0.75" in kd


def test_a_config_holds_its_parts_and_each_setting_is_declared_once():
    """Nested and flat construction agree; flat() round-trips; every flag has its help from its one declaration;
    the parts check their own values when made, in the library's words and in the command line's."""
    from kdjax.config import DataSpec, ExperimentConfig, flag_fields, layout_settings
    from kdjax.fields import SettingError
    from kdjax.train import Settings

    nested = ExperimentConfig(name="kd", seeds=(0, 1), training=Settings(epochs=2, batch_size=64),
                              data=DataSpec(train_size=500, normalize="dataset"))
    flat = ExperimentConfig.from_flat(name="kd", seeds=(0, 1), epochs=2, batch_size=64, train_size=500,
                                      normalize="dataset")
    assert nested == flat and ExperimentConfig.from_flat(**flat.flat()) == flat
    assert flat.replace(epochs=3).training == Settings(epochs=3, batch_size=64)
    assert flat.settings(teacher=True).epochs == 2 and flat.replace(teacher_epochs=5).settings(teacher=True).epochs == 5
    names = [f.name for f in flag_fields()]
    assert len(names) == len(set(names)) and all(f.metadata["help"] for f in flag_fields())
    assert {"epochs", "dataset", "teacher", "augment"} <= set(names) and "normalization" not in names
    assert {"devices", "checkpoint_dir", "cache"} <= layout_settings() and "epochs" not in layout_settings()
    with pytest.raises(SettingError, match=r"^schedule step needs milestones"):
        Settings(schedule="step")
    with pytest.raises(SettingError, match=r"^train_size must be > 0, got 0"):
        DataSpec(train_size=0)
    with pytest.raises(ConfigError, match=r"^--schedule step needs --milestones"):
        ExperimentConfig.from_flat(schedule="step")
    with pytest.raises(TypeError, match="no setting.*epoch\\b"):
        ExperimentConfig.from_flat(epoch=3)


@pytest.mark.parametrize("module", ["all", "teacher", "baseline", "kd", "cosine", "hint", "dkd", "lskd", "dist", "at",
                                    "rkd", "pkt", "sp", "gkd", "methods", "lm"])
def test_every_experiment_module_is_its_command(module, monkeypatch, capsys):
    """`python -m kdjax.experiments.<name> --help` (run in this process): the module parses its own command's flags."""
    import runpy

    monkeypatch.setattr("sys.argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"kdjax.experiments.{module}", run_name="__main__")
    assert exit_.value.code == 0
    assert f"python -m kdjax.experiments.{module}" in capsys.readouterr().out


def test_python_m_kdjax_experiments_names_the_experiment(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr("sys.argv", ["kdjax.experiments"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("kdjax.experiments", run_name="__main__")
    assert exit_.value.code == 2 and "usage: python -m kdjax.experiments {teacher," in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["kdjax.experiments", "sp", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("kdjax.experiments", run_name="__main__")
    assert exit_.value.code == 0 and "python -m kdjax.experiments.sp" in capsys.readouterr().out
