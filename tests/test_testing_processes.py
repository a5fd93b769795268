"""hicache_core.testing.processes: real child processes on 127.0.0.1, started, probed, stopped by PID."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from hicache_core.testing.processes import ServiceError, ServiceProcess, free_port, http_ready


def _http_server(tmp_path: Path) -> ServiceProcess:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port)]
    return ServiceProcess(argv, name="http.server", url=url, ready=http_ready(url + "/"),
                          log_path=tmp_path / "server.log")


def test_a_service_is_ready_once_it_answers_and_stops_by_pid(tmp_path: Path) -> None:
    with _http_server(tmp_path) as server:
        pid = server.pid
        assert pid is not None and server.alive()
        assert http_ready(server.url + "/")() is True
        assert http_ready(server.url + "/missing")() is False  # a 404 is not "ok"
        assert http_ready(server.url + "/missing", need_ok=False)() is True  # but the server answered
    assert not server.alive()
    assert server.stop() == -signal.SIGTERM  # stopping twice is safe and reports the status
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_nothing_listening_is_not_ready() -> None:
    assert http_ready(f"http://127.0.0.1:{free_port()}/health")() is False


def test_a_service_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad flag --frobnicate'); sys.exit(3)"]
    service = ServiceProcess(argv, name="broken", ready=lambda: False, log_path=tmp_path / "broken.log")
    with pytest.raises(ServiceError, match=r"broken exited \(code 3\)[\s\S]*bad flag --frobnicate"):
        service.start(timeout_s=30)


def test_a_service_that_never_answers_is_killed_after_the_timeout(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('still starting', flush=True); time.sleep(60)"]
    service = ServiceProcess(argv, name="slow", ready=lambda: False)
    with pytest.raises(ServiceError, match=r"slow \(pid \d+\) did not become ready[\s\S]*still starting"):
        service.start(timeout_s=1)
    assert not service.alive() and service.proc is not None and service.proc.returncode == -signal.SIGKILL
    assert service.log_path is None  # the temporary log is removed with the process
