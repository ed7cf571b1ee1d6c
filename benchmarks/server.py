"""Launch a stock or a2ats SGLang server for a benchmark, and watch its memory."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.client import Endpoint, EndpointError

SERVERS = {"stock": "sglang.launch_server", "a2ats": "a2ats_sglang.launch_server"}


class MemoryWatch:
    """Peak GPU memory (nvidia-smi, MiB) and host RSS of a process tree (GiB), sampled each second."""

    def __init__(self, pid: int) -> None:
        self.pid, self.gpu_mib, self.host_gib = pid, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout.split()
                self.gpu_mib = max(self.gpu_mib, max((int(x) for x in out), default=0))
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.host_gib = max(self.host_gib, rss / 2**30)
            except psutil.Error:
                pass

    def reset(self) -> None:
        """Peaks from now on (one workload of a server that serves several)."""
        self.gpu_mib, self.host_gib = 0, 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _exit_on_sigterm() -> None:
    """``timeout`` and the node's time limit stop a harness with SIGTERM, which by default ends
    Python without running ``finally``; the server runs in its own session and would outlive it
    (and answer the next run's health checks). Exit through the ``finally`` blocks instead."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A launched server process group, stopped on exit."""

    def __init__(self, kind: str, model: str, port: int, extra: list[str], log: Path) -> None:
        module = SERVERS[kind]
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"{module} is not available in this installation")
        if port_in_use(port):  # its health checks would pass for the wrong server
            raise RuntimeError(f"port {port} is already in use (a server left over from an earlier run?)")
        self.cmd = [sys.executable, "-m", module, "--model-path", model, "--host", "127.0.0.1", "--port", str(port), *extra]
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "w")
        _exit_on_sigterm()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

    def wait_healthy(self, timeout: float) -> float:
        started = time.time()
        endpoint = Endpoint(self.url, timeout=10)
        while time.time() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} while starting; log tail:\n{self.tail()}")
            try:
                endpoint.health()
                return time.time() - started
            except EndpointError:
                time.sleep(2)
        raise RuntimeError(f"server not healthy after {timeout:g} s; log tail:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log_file.close()
