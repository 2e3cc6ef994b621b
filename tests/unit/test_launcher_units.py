"""The launcher's plain logic: where things listen, redaction, the restart back-off, make ARGS."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import pytest
from amcsearch.launcher import PortTakenError, Stack, load_settings
from amcsearch.ports import BY_MODULE
from amcsearch.processes import Process
from amcsearch.runtime.redact import RedactingFilter, redact, secret_values
from amcsearch.runtime.settings import SettingsError
from amcsearch.supervisor import RestartPolicy, Supervisor

ROOT = Path(__file__).resolve().parents[2]


def test_redact_hides_url_passwords_and_known_secrets():
    text = "redis=redis://:p4ssw0rd-xyz@127.0.0.1:6380/0 milvus=http://root:Milvus1@db:19530 token abcdef123"
    assert redact(text, ["abcdef123"]) == (
        "redis=redis://:***@127.0.0.1:6380/0 milvus=http://root:***@db:19530 token ***"
    )
    environ = {"REDIS_URL": "redis://u:pw-1234@h:1/0", "INTERNAL_AUTH_TOKEN": "tok-5678", "PATH": "/bin"}
    assert set(secret_values(environ)) == {"pw-1234", "tok-5678"}


def test_the_log_filter_redacts_arguments_and_secrets_added_later():
    secrets: list[str] = []
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "url %s key %s", ("redis://:pw-9999@h/0", "k-123456"), None
    )
    secrets.append("k-123456")
    assert RedactingFilter(secrets).filter(record)
    assert record.getMessage() == "url redis://:***@h/0 key ***"


def test_restart_back_off_doubles_to_its_cap():
    policy = RestartPolicy(initial_seconds=1, max_seconds=60)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_launcher_settings_come_from_the_environment_and_bad_ones_fail():
    settings = load_settings({"LAUNCHER_METRICS_PORT": "0", "LAUNCHER_RESTART_MAX_SECONDS": "300"})
    assert settings.metrics_port == 0 and settings.restart.max_seconds == 300 and settings.restart.initial_seconds == 1
    with pytest.raises(SettingsError, match="LAUNCHER_RESTART"):
        load_settings({"LAUNCHER_RESTART_INITIAL_SECONDS": "0"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def exited(process: Process) -> None:
    assert process.popen is not None
    process.popen.wait(10)


def test_a_crash_looping_child_is_started_again_with_a_doubling_wait_and_never_given_up(tmp_path):
    process = Process("flaky", ["/bin/sh", "-c", "exit 3"], {}, tmp_path / "flaky.log")
    process.start()
    clock = Clock()
    supervisor = Supervisor({"flaky": process}, RestartPolicy(1, 4, 100), clock)
    waits = []
    for _ in range(6):
        exited(process)
        assert supervisor.check() == []  # noted, waiting
        child = supervisor.children["flaky"]
        waits.append(child.due - clock.now)
        assert child.last_exit_code == 3
        clock.now = child.due
        assert supervisor.check() == ["flaky"]
    assert waits == [1, 2, 4, 4, 4, 4]
    snapshot = supervisor.snapshot()["flaky"]
    assert snapshot["restarts"] == 6 and snapshot["state"] == "crash_loop"
    # it now runs for reset_seconds: healthy again, and its next exit waits the first step
    exited(process)
    process.argv = ["/bin/sh", "-c", "sleep 30"]
    supervisor.check()
    clock.now = supervisor.children["flaky"].due
    supervisor.check()
    clock.now += 100
    supervisor.check()
    assert supervisor.snapshot()["flaky"]["state"] == "running"
    process.kill()
    supervisor.check()
    assert supervisor.children["flaky"].due == clock.now + 1


def fake_repository(path: Path) -> Path:
    (path / "text_encoder" / "configs").mkdir(parents=True)
    (path / "text_encoder" / "configs" / "pyt.pbtxt").write_text("")
    return path


def test_a_taken_port_is_one_line_naming_its_variable_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(
            fake_repository(tmp_path / "repo"),
            tmp_path / "logs",
            services=(BY_MODULE["query_encoder"],),
            environ={"QUERY_ENCODER_METRICS_PORT": str(port)},
        )
        with pytest.raises(PortTakenError) as taken:
            stack.start()
    message = str(taken.value)
    assert "\n" not in message and f"port {port} (query_encoder metrics)" in message
    assert "set QUERY_ENCODER_METRICS_PORT" in message
    assert not stack.processes


def test_a_port_given_twice_names_both_variables(tmp_path):
    stack = Stack(
        fake_repository(tmp_path / "repo"),
        tmp_path / "logs",
        services=(BY_MODULE["query_encoder"],),
        environ={"QUERY_ENCODER_PORT": "23999", "REDIS_PORT": "23999"},
    )
    with pytest.raises(PortTakenError, match="REDIS_PORT.*QUERY_ENCODER_PORT"):
        stack.start()
    with pytest.raises(SettingsError, match="QUERY_ENCODER_PORT='x'"):
        Stack(stack.repository, stack.log_dir, environ={"QUERY_ENCODER_PORT": "x"}).start()


def test_an_addr_variable_places_that_service_elsewhere(tmp_path):
    stack = Stack(
        fake_repository(tmp_path / "repo"), tmp_path / "logs", environ={"QUERY_ENCODER_ADDR": "10.0.0.5:50051"}
    )
    assert stack.external_services() == {"query_encoder": "10.0.0.5:50051"}
    assert "query_encoder" not in [s.module for s in stack.selected_services()]


def test_make_passes_args_through_to_loadtest_and_up():
    for target, args, expected in (
        ("loadtest", "--shape step", "-m loadtests.run --shape step"),
        ("up", "--free-ports", "-m amcsearch.launcher --free-ports"),
    ):
        dry = subprocess.run(
            ["make", "-n", target, f"ARGS={args}"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert expected in dry.stdout, dry.stdout + dry.stderr


def test_the_local_prometheus_scrapes_the_launcher():
    import yaml
    from amcsearch.ports import LAUNCHER_METRICS_PORT

    loaded = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.local.yml").read_text())
    targets = {t for job in loaded["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"127.0.0.1:{LAUNCHER_METRICS_PORT[1]}" in targets


def test_search_addr_gives_the_gateways_port_when_search_port_is_unset(tmp_path):
    repository = fake_repository(tmp_path / "repo")
    for model in ("image_encoder", "amc_rescorer"):
        (repository / model / "configs").mkdir(parents=True)
        (repository / model / "configs" / "pyt.pbtxt").write_text("")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(
            repository,
            tmp_path / "logs",
            services=(BY_MODULE["search"],),
            environ={"SEARCH_ADDR": f"127.0.0.1:{port}"},
        )
        with pytest.raises(PortTakenError, match=f"port {port} \\(search gRPC\\).*set SEARCH_ADDR"):
            stack.start()


def test_services_and_triton_stubs_get_the_malloc_thresholds_unless_set(tmp_path, monkeypatch):
    """Without them a stub's forward and a service's megabyte tensors fault in fresh pages on
    every request (docs/decisions/0003-python-backend.md); an operator's own value wins."""
    from amcsearch import processes

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    service = processes.service_process("amcsearch.search", "SEARCH", 1, 2, {}, tmp_path, tmp_path)
    assert service.env["GLIBC_TUNABLES"] == processes.MALLOC_TUNABLES
    assert processes.triton_environment(tmp_path)["GLIBC_TUNABLES"] == processes.MALLOC_TUNABLES
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    service = processes.service_process("amcsearch.search", "SEARCH", 1, 2, {}, tmp_path, tmp_path)
    assert service.env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
