"""Session fixtures: the real stack (tritonserver from the wheel, redis-server, services)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc
import pytest

from amcsearch.launcher import SERVICES, Stack
from tests.integration.tiny_models import write_tiny_repository


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("tiny_model_repository")
    write_tiny_repository(repository)
    return repository


def start_stack(repository: Path, log_dir: Path, **env: str) -> Stack:
    stack = Stack(repository, log_dir, extra_env={"TRITON_CANARY_INTERVAL_SECONDS": "3600", **env},
                  services=tuple(s for s in SERVICES if s.module == "query_encoder"))
    stack.start(timeout=120)
    return stack


@pytest.fixture(scope="session")
def tiny_stack(tiny_repository, tmp_path_factory):
    stack = start_stack(tiny_repository, tmp_path_factory.mktemp("logs"))
    yield stack
    stack.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        label_text = line[line.find("{") + 1 : line.find("}")] if "{" in line else ""
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def channel_to():
    channels = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()
