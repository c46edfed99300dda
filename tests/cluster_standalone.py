"""A Spark standalone cluster on 127.0.0.1 for tests: one master and N workers started from the pyspark
installation with `spark-class`, each in its own process group so that a worker (with the executors and
Python workers it launched) can be killed like a lost machine, and everything is stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
MASTER = "org.apache.spark.deploy.master.Master"
WORKER = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def wait_for(what: str, check, timeout: float, log: Path | None = None):
    """Poll `check` until it returns something truthy; raise with the log's tail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:  # not listening yet
            found = None
        if found:
            return found
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what}: not after {timeout:.0f}s\n{tail}")


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    log: Path
    webui_port: int

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the daemon's process group: its JVM and every process it launched."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.process.wait(timeout=15)
        with contextlib.suppress(
            ProcessLookupError
        ):  # what the daemon launched shares its group: none outlives it
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class StandaloneCluster:
    """`with StandaloneCluster(folder, workers=2) as cluster:` submits to `cluster.url`."""

    folder: Path
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "1500m"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    master: Daemon | None = None
    worker_daemons: list[Daemon] = field(default_factory=list)
    url: str = ""

    def __enter__(self) -> StandaloneCluster:
        self.env.setdefault("SPARK_HOME", str(SPARK_CLASS.parent.parent))
        self.env["SPARK_LOCAL_IP"] = "127.0.0.1"
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], webui_port: int) -> Daemon:
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(SPARK_CLASS), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.folder,
                start_new_session=True,
            )
        return Daemon(name, process, log, webui_port)

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        port, webui = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{port}"
        self.master = self._spawn(
            "master", [MASTER, "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)], webui
        )
        wait_for("Spark master", lambda: self.state().get("status") == "ALIVE", 90, self.master.log)
        for number in range(self.workers):
            work_dir = self.folder / f"worker-{number}"
            work_dir.mkdir(exist_ok=True)
            webui = free_port()
            self.worker_daemons.append(
                self._spawn(
                    f"worker-{number}",
                    [
                        WORKER,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(free_port()),
                        "--webui-port",
                        str(webui),
                        "--cores",
                        str(self.worker_cores),
                        "--memory",
                        self.worker_memory,
                        "--work-dir",
                        str(work_dir),
                        self.url,
                    ],
                    webui,
                )
            )
        wait_for(
            f"{self.workers} alive workers",
            lambda: len(self.alive_workers()) == self.workers,
            90,
            self.worker_daemons[-1].log,
        )

    def state(self) -> dict:
        """The master's JSON status: workers, active and completed applications."""
        return get_json(f"http://127.0.0.1:{self.master.webui_port}/json/")

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state()["workers"] if w["state"] == "ALIVE"]

    def worker_of(self, executor: dict) -> Daemon:
        """The worker that launched an executor (from the driver's REST API), by its log links' web UI port."""
        link = executor["executorLogs"]["stdout"]
        return next(d for d in self.worker_daemons if f":{d.webui_port}/" in link)

    def stop(self) -> None:
        for daemon in [*self.worker_daemons, *([self.master] if self.master else [])]:
            daemon.stop()
