"""The experiment commands' flags: one per declared setting (`kdjax.config.flag_fields`), plus the hyperparameters
of the command's methods; parsed into an `ExperimentConfig` over a recipe's values over the defaults."""

from __future__ import annotations

import argparse
from typing import Any

from kdjax.config import DEFAULT_RECIPES, ConfigError, ExperimentConfig, flag, flag_fields
from kdjax.recipes import recipe_values


class UsageError(ConfigError):
    """Flags that do not parse (argparse's own complaint); the command exits 2, as argparse would."""


class OneLineParser(argparse.ArgumentParser):
    """`argparse` whose errors are one line (raised as UsageError), not the usage block then the error."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help lists the flags)")


def _items(text: str, what: str) -> list[str]:
    """The comma-separated items of `text`; an empty item (`0,,1`, a trailing comma) is an error."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"takes comma-separated {what} without empty items, got {text!r}")
    return items


def _integers(what: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(item) for item in _items(text, what))
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes comma-separated {what}, got {text!r}") from None

    return parse


def _names(text: str) -> tuple[str, ...]:
    return tuple(_items(text, "names"))


def _grid_axis(text: str) -> tuple[str, tuple[float, ...]]:
    name, _, values = text.partition("=")
    try:
        parsed = tuple(float(v) for v in _items(values, "values"))
    except (ValueError, argparse.ArgumentTypeError):
        parsed = ()
    if not name or not parsed:
        raise argparse.ArgumentTypeError(f"takes NAME=V1,V2,..., got {text!r}")
    return name.strip().replace("-", "_"), parsed


PARSERS = {"seeds": _integers("integers"), "milestones": _integers("epochs"), "methods": _names}
STUDENT_ONLY = {"student", "baseline", "teacher_epochs", "teacher_seed", "teacher_augment", "cache", "validation_size",
                "teacher_weights", "teacher_topk"}


def command_defaults(experiment: str) -> ExperimentConfig:
    """The config `experiment` runs with no flags given: its default recipe's, where it has one."""
    recipe = DEFAULT_RECIPES.get(experiment)
    return ExperimentConfig.from_flat(name=experiment, recipe=recipe, **recipe_values(recipe, ExperimentConfig.student))


def add_flags(parser: argparse.ArgumentParser, experiment: str) -> None:
    """One flag per declared setting this experiment uses, plus its methods' hyperparameters; `--help` shows the
    defaults this experiment runs with."""
    defaults = command_defaults(experiment)
    flat, plain = defaults.flat(), ExperimentConfig().flat()
    skip = STUDENT_ONLY if experiment == "teacher" else set()
    if experiment not in ("methods", "lm"):
        skip = skip | {"methods"}
    for field in flag_fields():
        if field.name in skip:
            continue
        default, help_text = flat[field.name], field.metadata["help"]
        if "(default:" not in help_text:  # a default that is another flag says so itself
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})" if shown != "" else ""
        # Flags not given stay out of the namespace, so that a --recipe can supply them (see from_args).
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if field.name == "augment":
            kwargs |= {"nargs": "?", "const": "flip"}
        elif field.name in PARSERS:
            kwargs["type"] = PARSERS[field.name]
        elif isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int | None": int, "str | None": str}.get(str(field.type), type(plain[field.name]))
        parser.add_argument(flag(field.name), **kwargs)
    chosen = defaults.chosen_methods
    group = parser.add_argument_group("method hyperparameters (each sweepable with --sweep NAME=V1,V2,...)")
    recipe_weights = {method: dict(values) for method, values in defaults.method_defaults}
    for name in sorted({n for m in chosen for n in m.hyperparameters}):
        owners = ", ".join(f"{m.name} {recipe_weights.get(m.name, {}).get(name, m.hyperparameters[name]):g}"
                           for m in chosen if name in m.hyperparameters)
        group.add_argument(flag(name), type=float, default=None, dest=f"hp_{name}",
                           help=f"default per method: {owners}")
    if chosen and any(m.hyperparameters for m in chosen):
        group.add_argument("--sweep", type=_grid_axis, action="append", default=[], metavar="NAME=V1,V2,...",
                           help="train every value (grids cross; each point with every seed); repeatable")


def from_args(name: str, args: argparse.Namespace) -> ExperimentConfig:
    """The config named `name` from parsed flags over `--recipe`'s values over the defaults."""
    given: dict[str, Any] = {f.name: getattr(args, f.name) for f in flag_fields() if hasattr(args, f.name)}
    given.setdefault("recipe", DEFAULT_RECIPES.get(name))
    try:
        values = recipe_values(given["recipe"], given.get("student", ExperimentConfig.student)) | given
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if given.get("teacher_weights") and "normalize" not in given:
        values["normalize"] = "auto"  # a released teacher's own normalisation, not the recipe's data statistics
    values["hyperparameters"] = tuple(sorted((key[3:], value) for key, value in vars(args).items()
                                             if key.startswith("hp_") and value is not None))
    values["sweep"] = tuple(getattr(args, "sweep", []) or ())
    axes = [axis for axis, _ in values["sweep"]]
    for axis in axes:
        if axes.count(axis) > 1:
            raise ConfigError(f"--sweep {axis} is given twice: give its values once (--sweep {axis}=V1,V2,...)")
        if axis in dict(values["hyperparameters"]):
            raise ConfigError(f"{flag(axis)} and --sweep {axis} both set {axis}: keep one")
    return ExperimentConfig.from_flat(name=name, **values)


__all__ = ["OneLineParser", "UsageError", "add_flags", "command_defaults", "from_args"]
