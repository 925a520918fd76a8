"""The stack's processes (the simulator and the four services) as OS processes: which console entry point runs
each, on which port, starting one, checking that it answers, stopping it.

`make run` (deploy/local/stack.py) and the black-box test harness (waflow_testing.stack) both run the stack this
way, so what the suite proves is what `make run` starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    command: str  # the console entry point
    port_variable: str
    default_port: int

    def port(self, env: dict[str, str] | None = None) -> int:
        return int((os.environ if env is None else env).get(self.port_variable, self.default_port))


# In start order: the simulator first (outbound calls it), then ingest (the simulator's webhooks call it).
PROCESSES: tuple[ProcessSpec, ...] = (
    ProcessSpec("simulator", "waflow-simulator", "SIMULATOR_PORT", 8090),
    ProcessSpec("ingest", "waflow-ingest", "INGEST_PORT", 8001),
    ProcessSpec("conversation", "waflow-conversation", "CONVERSATION_PORT", 8002),
    ProcessSpec("contacts", "waflow-contacts", "CONTACTS_PORT", 8003),
    ProcessSpec("outbound", "waflow-outbound", "OUTBOUND_PORT", 8004),
)
BY_NAME = {spec.name: spec for spec in PROCESSES}


def executable(command: str) -> Path:
    """The entry point installed beside the running interpreter (the workspace's virtual environment)."""
    return Path(sys.executable).parent / command


def spawn(spec: ProcessSpec, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Starts the process in a session of its own (so a signal to its group reaches nothing else), logging to
    `log_path` (appended: a restarted process keeps its predecessor's lines)."""
    command = executable(spec.command)
    if not command.exists():
        raise FileNotFoundError(f"{spec.name}: {spec.command} is not installed (run `uv sync`)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([str(command)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), for a process started next."""
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether the process runs; a child of ours that exited is reaped here (a zombie would still answer kill 0)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def answers(port: int, path: str = "/healthz", timeout: float = 2.0) -> bool:
    """Whether a process on loopback answers 200 on `path`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def kill(pid: int) -> None:
    """SIGKILL to the process's group: no shutdown code runs, as when a machine or container dies."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_gone(pid, 10.0)


def stop(pid: int, grace: float = 5.0) -> None:
    """SIGTERM to the process's group, then SIGKILL if it has not exited within `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, grace):
        kill(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
