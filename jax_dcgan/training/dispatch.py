"""Which steps each device call runs, and how many steps a call fuses.

A run is cut into segments at epoch ends, checkpoint steps and its last step.
Each segment runs in calls of K steps (`lax.scan`) from its start and its last
(length mod K) steps one call each, so a run compiles two step programs at most
and epoch ends never make a new program size. The call that starts at a step
depends on that step alone, so a resumed run dispatches, and rounds, exactly as
an uninterrupted one.

K comes from the measured time of one step: enough steps that a call lasts about
`TARGET_SECONDS`, so per-call overhead and the loop's host work hide behind the
device's work (on an accelerator one step of the lecture's model is a
millisecond or two).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from jax_dcgan.common.errors import UserError

__all__ = ["Dispatch", "Plan", "choose_steps_per_dispatch", "time_one_step"]

TARGET_SECONDS = 0.05
MAX_STEPS = 256
LAST_STEP = 2 ** 31 - 1  # the step counters (the state's, Adam's) are int32 on the device


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """One device call: the steps it runs."""
    step: int   # the first step of the call, counting from 0
    count: int  # steps in the call: K or 1

    @property
    def end(self) -> int:
        """The step count after the call."""
        return self.step + self.count


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a run's calls begin and end: epochs, checkpoint steps, steps per call."""
    steps_per_epoch: int
    total_steps: int
    checkpoint_every: int   # 0: no checkpoint steps
    steps_per_dispatch: int

    def __post_init__(self):
        if self.total_steps > LAST_STEP:
            raise UserError(f"The run would take {self.total_steps} steps, and the step "
                            f"counters (int32, as optax's) end at {LAST_STEP}; lower --epochs "
                            "or --steps.")

    @property
    def _periods(self) -> tuple[int, ...]:
        """Segments end at multiples of these (and at the last step)."""
        return tuple(p for p in (self.steps_per_epoch, self.checkpoint_every) if p)

    def segment_end(self, step: int) -> int:
        """The first epoch end, checkpoint step or last step after `step`."""
        return min([self.total_steps] + [(step // p + 1) * p for p in self._periods])

    def segment_start(self, step: int) -> int:
        return max(step // p * p for p in self._periods)

    def next(self, step: int) -> Dispatch:
        k = self.steps_per_dispatch
        aligned = (step - self.segment_start(step)) % k == 0
        return Dispatch(step, k if aligned and step + k <= self.segment_end(step) else 1)

    def segments(self) -> collections.Counter:
        """How many segments of each length the run has (whatever K is)."""
        lengths, step = collections.Counter(), 0
        while step < self.total_steps:
            end = self.segment_end(step)
            lengths[end - step] += 1
            step = end
        return lengths

    def dispatches(self, start: int) -> Iterator[Dispatch]:
        step = start
        while step < self.total_steps:
            dispatch = self.next(step)
            yield dispatch
            step = dispatch.end

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def is_epoch_end(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def is_checkpoint_step(self, step: int) -> bool:
        return step == self.total_steps or bool(
            self.checkpoint_every and step % self.checkpoint_every == 0)

    def is_sync_point(self, dispatch: Dispatch, log_every: int) -> bool:
        """Whether the loop records metrics after this call (and the processes of a
        multi-process run agree on stopping and on the clock): when it completes a multiple
        of `log_every` steps or a segment."""
        return (dispatch.end // log_every > dispatch.step // log_every
                or dispatch.end == self.segment_end(dispatch.step))


def choose_steps_per_dispatch(seconds_per_step: float, segments: collections.Counter) -> int:
    """K: at most the steps of about TARGET_SECONDS and at most the longest segment; of those,
    the K that runs the run's segments in the fewest calls (larger K on a tie), e.g. 2 x 25
    rather than 42 + 8 x 1 for epochs of 50 steps."""
    k = round(TARGET_SECONDS / max(seconds_per_step, 1e-9))
    k = max(1, min(k, MAX_STEPS, max(segments)))
    return min(range(k, 0, -1), key=lambda c: sum(
        count * (length // c + length % c) for length, count in segments.items()))


def time_one_step(step_fn: Callable, state, batch, repeats: int = 3) -> float:
    """Seconds per step of `step_fn` on a one-step batch: the fastest of `repeats` calls after
    the first (which compiles), each on a fresh copy of `state` (the call donates it), which
    is left as it was."""
    times = []
    for _ in range(repeats + 1):
        fresh = jax.block_until_ready(jax.tree.map(jnp.copy, state))
        start = time.perf_counter()
        jax.block_until_ready(step_fn(fresh, batch))
        times.append(time.perf_counter() - start)
    return min(times[1:])
