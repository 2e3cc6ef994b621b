"""A step-load shape: add users in steps, hold each step, stop at the end (bounded).

Used by adding this file to locust's -f list (`-f loadtests/locustfile.py,loadtests/shapes.py`,
which `python -m loadtests.run --shape step` does). Settings from the environment:
LOADTEST_STEP_USERS (users added per step, 2), LOADTEST_STEP_SECONDS (length of a step, 20),
LOADTEST_STEPS (number of steps, 4), LOADTEST_SPAWN_RATE (users started per second, 2).
"""

from __future__ import annotations

import os

from locust import LoadTestShape


class StepLoadShape(LoadTestShape):
    step_users = int(os.environ.get("LOADTEST_STEP_USERS", "2"))
    step_seconds = float(os.environ.get("LOADTEST_STEP_SECONDS", "20"))
    steps = int(os.environ.get("LOADTEST_STEPS", "4"))
    spawn_rate = float(os.environ.get("LOADTEST_SPAWN_RATE", "2"))

    def tick(self):
        elapsed = self.get_run_time()
        step = int(elapsed // self.step_seconds)
        if step >= self.steps:
            return None
        return (step + 1) * self.step_users, self.spawn_rate
