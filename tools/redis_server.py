"""A throwaway ``redis-server`` on a free local port, for tests and benchmarks of shared routing state.

Stopping it kills the process (as a crash would) and starting it again reuses the port with an empty
database (no persistence), which is what an outage test needs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

from tools.ports import free_port


class RedisServer:
    """``password``: the server requires it (``--requirepass``), as production's does."""

    def __init__(self, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--requirepass", self.password] if self.password else []
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered (a blackholed Redis)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
