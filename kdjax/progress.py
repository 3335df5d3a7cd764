"""Progress inside an epoch: steps done, examples per second and the time left.

On a terminal it is a tqdm bar; elsewhere (CI, nohup, a batch scheduler's log) one line every
`log_every` steps. The rate leaves out the epoch's first step, which pays for compilation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm


def duration_text(seconds: float) -> str:
    """`95` -> `1 min 35 s`; `4000` -> `1 h 07 min`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class EpochProgress:
    """One epoch's progress from batch `initial` of `total`.

    Call `first_step_done()` once the first step's results are on the host (after compiling),
    then `update(done, examples, loss)` as steps finish; `close()` at the end.
    """

    def __init__(self, desc: str, total: int, initial: int, examples: str, *, log: Callable[[str], None],
                 log_every: int, enabled: bool = True, terminal: bool | None = None):
        self.desc, self.total, self.examples, self.log, self.log_every = desc, total, examples, log, log_every
        self.enabled = enabled
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                        disable=not (enabled and terminal))
        self.use_log = enabled and not terminal and log_every > 0
        self.since: tuple[float, int, int] | None = None  # (time, steps done, examples done) after the first step

    def first_step_done(self, done: int, examples: int) -> None:
        self.since = (time.perf_counter(), done, examples)

    def rate(self, done: int, examples: int) -> tuple[float, float] | None:
        """(examples per second, seconds left), from the steps after the first; None before there are any."""
        if self.since is None or done <= self.since[1]:
            return None
        elapsed = time.perf_counter() - self.since[0]
        per_step = elapsed / (done - self.since[1])
        return (examples - self.since[2]) / elapsed, per_step * (self.total - done)

    def update(self, done: int, examples: int, loss: str) -> None:
        if not self.enabled:
            return
        measured = self.rate(done, examples)
        if not self.bar.disable:
            postfix = {"loss": loss}
            if measured:
                postfix[f"{self.examples}/s"] = f"{measured[0]:,.0f}"
            self.bar.set_postfix(postfix)
            self.bar.update(done - self.bar.n)
        if self.use_log and done % self.log_every == 0 and done < self.total:
            speed = (f", {measured[0]:,.0f} {self.examples}/s, {duration_text(measured[1])} left of the epoch"
                     if measured else "")
            self.log(f"{self.desc}: step {done}/{self.total}, loss {loss}{speed}")

    def close(self) -> None:
        self.bar.close()
