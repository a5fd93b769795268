"""Services in child processes for tests: started on 127.0.0.1, waited for, stopped by PID.

The project's rule for tests that need a server (a metadata service, an S3 emulator, a
``hicache serve`` node) is: start it in a fixture on a free loopback port, wait until it
answers, and stop it by its PID at teardown, so a plain ``pytest`` works on a clean machine.
``ServiceProcess`` does exactly that, with the child's output in a log file whose tail goes
into every error. Backend authors can use it for their own services:

.. code-block:: python

    import sys
    import pytest
    from hicache_core.testing.processes import ServiceProcess, free_port, http_ready

    @pytest.fixture(scope="session")
    def my_server(tmp_path_factory):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = ServiceProcess(
            [sys.executable, "-m", "my_server", "--host", "127.0.0.1", "--port", str(port)],
            name="my server", url=url, ready=http_ready(url + "/health"),
            log_path=tmp_path_factory.mktemp("my_server") / "server.log",
        )
        with server:  # start() and wait until ready; stop() by PID on exit
            yield server.url
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service exited or did not become ready in time; the message carries its log's tail."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_ready(url: str, need_ok: bool = True, timeout_s: float = 1.0) -> Callable[[], bool]:
    """A readiness probe: True once ``url`` answers 200 (or, without ``need_ok``, anything below 500)."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:  # an answer, even a 404, means the server is up
            return not need_ok and exc.code < 500
        except OSError:
            return False

    return probe


class ServiceProcess:
    """One service in a child process.

    ``argv`` is the command; ``ready`` a cheap callable that returns True once the service
    answers (``http_ready(url)`` for HTTP services; without one the service counts as ready
    as soon as it runs). Output goes to ``log_path`` (appended to, so a restart keeps the
    earlier run's lines), or to a temporary file. ``new_session`` puts the child in its own
    session, away from the terminal's signals.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "service",
        url: str = "",
        ready: Callable[[], bool] | None = None,
        log_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.url = url
        self.ready = ready
        self.log_path = Path(log_path) if log_path is not None else None
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        self._own_log = False

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the service's output, for error messages."""
        if self.log_path is None:
            return "(no log)"
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ lifecycle
    def spawn(self) -> ServiceProcess:
        """Start the child without waiting for it (start several, then ``wait_ready`` each)."""
        if self.alive():
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        if self.log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"hicache-{self.name.replace(' ', '-')}-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(path), True
        with open(self.log_path, "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=self.new_session,
            )
        return self

    def wait_for(self, ready: Callable[[], bool], what: str, timeout_s: float = 30.0, poll_s: float = 0.05) -> None:
        """Wait until ``ready()``; raise ``ServiceError`` if the child exits first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if ready():
                return
            if not self.alive():
                code = self.proc.poll() if self.proc is not None else None
                raise ServiceError(f"{self.name} exited (code {code}) before {what}; log:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ServiceError(f"{self.name} (pid {self.pid}) did not become ready ({what}) within "
                                   f"{timeout_s:.0f} s; log:\n{self.log_tail()}")
            time.sleep(poll_s)

    def wait_ready(self, timeout_s: float = 30.0) -> ServiceProcess:
        """Wait until the ``ready`` probe passes (see ``wait_for``)."""
        probe = self.ready or self.alive
        self.wait_for(probe, f"{self.url or 'it'} answered" if self.ready else "it ran", timeout_s)
        return self

    def start(self, timeout_s: float = 30.0) -> ServiceProcess:
        """``spawn`` and ``wait_ready``; a service that fails to come up is stopped before the error."""
        self.spawn()
        try:
            return self.wait_ready(timeout_s)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Send ``sig`` to the child by PID, then SIGKILL after ``timeout_s``; its exit status.

        Safe to call twice; ``None`` when it was never started.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
            except ProcessLookupError:
                proc.wait(timeout=timeout_s)
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path, self._own_log = None, False
        return proc.returncode

    def kill(self) -> int | None:
        """``kill -9`` the child and reap it."""
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> ServiceProcess:
        return self if self.alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
