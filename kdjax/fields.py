"""Settings declared once: each field's default, its help text, and what it does to a checkpoint's identity.

`setting(default, help)` declares a dataclass field; the command line builds its flag and help from it, and
`kdjax.identity` reads `identity`: `always` (the field decides results), `changed` (added after runs were first
written: it enters an identity only when it differs from its default, so those runs keep theirs) or `never`
(where a run writes or how its members are laid out, not what it computes).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Literal

Identity = Literal["always", "changed", "never"]


class SettingError(ValueError):
    """A setting's value that cannot work: `field`, then `reason`, which may name the settings in `related`."""

    def __init__(self, field: str, reason: str, related: tuple[str, ...] = ()):
        self.field, self.reason, self.related = field, reason, related
        super().__init__(self.render(str))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each setting's name written by `name` (e.g. as its command-line flag)."""
        reason = self.reason
        for other in self.related:
            reason = re.sub(rf"\b{other}\b", name(other), reason)
        return name(self.field) + ("" if reason.startswith(":") else " ") + reason


def setting(default: Any, help: str, *, identity: Identity = "always") -> Any:
    """A dataclass field with its help text and identity membership (see the module docstring)."""
    return dataclasses.field(default=default, metadata={"help": help, "identity": identity})


def declared(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of dataclass `cls` declared with `setting`."""
    return tuple(f for f in dataclasses.fields(cls) if "help" in f.metadata)


def require(checks: list[tuple]) -> None:
    """Raise SettingError for the first `(ok, field, reason[, related])` that is not ok."""
    for ok, *error in checks:
        if not ok:
            raise SettingError(*error)
