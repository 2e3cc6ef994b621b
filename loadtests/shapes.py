"""A step-load shape: add users in steps, hold each step, stop at the end (bounded).

Used by adding this file to locust's -f list (`-f loadtests/locustfile.py,loadtests/shapes.py`,
which `python -m loadtests.run --shape step` does); the plan comes from the environment
(loadtests/steps.py: LOADTEST_STEP_USERS, LOADTEST_STEP_SECONDS, LOADTEST_STEPS, LOADTEST_SPAWN_RATE).
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.steps import StepPlan


class StepLoadShape(LoadTestShape):
    plan = StepPlan.from_env()

    def tick(self):
        users = self.plan.users_at(self.get_run_time())
        return None if users is None else (users, self.plan.spawn_rate)
