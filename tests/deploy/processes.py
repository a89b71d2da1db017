"""Real processes for the end-to-end deployment tests: `vidrec` commands and a private
redis-server, each started on a free loopback port and stopped by its own pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import free_port, stop_process

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def vidrec_executable() -> str:
    """The `vidrec` console script of this environment (what the images' ENTRYPOINT is)."""
    script = BIN / "vidrec"
    assert script.exists(), f"{script} missing: install the project (pip install -e .)"
    return str(script)


def path_with_venv(env: dict[str, str]) -> dict[str, str]:
    """`vidrec` and `python` resolve to this environment's, as they do inside the image."""
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.log_path = name, argv, log
        self._log = log.open("wb")
        # the checkout under test, not the one the environment's editable install points at
        # (a git worktree shares the venv of the main checkout)
        env = {**env, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=15)
        self._log.close()


def wait_for(check: Callable[[], bool], what: str, process: Process | None = None,
             timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise AssertionError(f"{what}: {process.name} exited with "
                                 f"{process.proc.returncode}:\n{process.log_tail()}")
        if check():
            return
        time.sleep(0.25)
    tail = f":\n{process.log_tail()}" if process else ""
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A private redis-server (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = free_port()
    proc = Process("redis-server", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                   dict(os.environ), tmp / "redis.log")
    try:
        import redis

        client = redis.Redis(port=port)

        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(ping, "redis-server", proc, 30)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()
