"""The step-load plan, from the environment (no locust import: loadtests/run.py reads it too).

LOADTEST_STEP_USERS (users added per step, 2), LOADTEST_STEP_SECONDS (length of a step, 20),
LOADTEST_STEPS (number of steps, 4), LOADTEST_SPAWN_RATE (users started per second, 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    step_users: int
    step_seconds: float
    steps: int
    spawn_rate: float

    @classmethod
    def from_env(cls) -> StepPlan:
        return cls(
            int(os.environ.get("LOADTEST_STEP_USERS", "2")),
            float(os.environ.get("LOADTEST_STEP_SECONDS", "20")),
            int(os.environ.get("LOADTEST_STEPS", "4")),
            float(os.environ.get("LOADTEST_SPAWN_RATE", "2")),
        )

    @property
    def duration(self) -> float:
        return self.steps * self.step_seconds

    def users_at(self, elapsed: float) -> int | None:
        """Users wanted `elapsed` seconds into the run; None once the last step is over."""
        step = int(elapsed // self.step_seconds)
        return None if step >= self.steps else (step + 1) * self.step_users
