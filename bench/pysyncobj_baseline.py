"""The PySyncObj baseline: three `pysyncobj_node` processes on free 127.0.0.1 ports, started
and stopped (by process id) by the benchmark, running the same workload as the in-process
cluster on their leader."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from bench.workload import Workload
from raft.hosts.latency import Latency

LOOPBACK = "127.0.0.1"
NODE_MODULE = "bench.pysyncobj_node"
STOP_TIMEOUT_S = 5.0
# PySyncObj's own default (SyncObjConf.appendEntriesPeriod).
DEFAULT_APPEND_PERIOD_S = 0.1


def available() -> bool:
    return importlib.util.find_spec("pysyncobj") is not None


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out on 127.0.0.1; all held open together so they differ."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True, slots=True)
class BaselineResult:
    nodes: int
    clients: int
    requested: int
    committed: int
    errors: int
    elapsed_s: float
    latency: Latency
    timed_out: bool
    append_period_s: float | None = None

    @property
    def throughput(self) -> float:
        return self.committed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "nodes": self.nodes,
            "clients": self.clients,
            "requested": self.requested,
            "committed": self.committed,
            "errors": self.errors,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 4),
            "commands_per_s": round(self.throughput, 1),
            "latency_ms": {"p50": self.latency.p50_ms, "p99": self.latency.p99_ms},
            "config": {
                "appendEntriesUseBatch": True,
                "appendEntriesPeriod_s": self.append_period_s or DEFAULT_APPEND_PERIOD_S,
                "processes": self.nodes,
            },
        }


class _Node:
    def __init__(self, port: int, partners: list[int], append_period_s: float | None) -> None:
        self.port = port
        period = "default" if append_period_s is None else str(append_period_s)
        self.process = subprocess.Popen(
            [sys.executable, "-m", NODE_MODULE, period, str(port), *map(str, partners)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise TimeoutError(f"pysyncobj node {self.port}: no answer to {request['cmd']}")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"pysyncobj node {self.port} exited ({self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def stop(self) -> None:
        """Ask it to quit; past the timeout, terminate and then kill this process id."""
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.ask({"cmd": "quit"}, STOP_TIMEOUT_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(Exception):
                    pipe.close()


def run_baseline(
    workload: Workload,
    nodes: int = 3,
    append_period_s: float | None = None,
    leader_timeout_s: float = 20.0,
) -> BaselineResult:
    """Run `workload` on a fresh PySyncObj cluster; `append_period_s` None keeps PySyncObj's
    default batching period (100 ms)."""
    ports = free_ports(nodes)
    cluster = [_Node(p, [q for q in ports if q != p], append_period_s) for p in ports]
    try:
        leader = _wait_for_leader(cluster, leader_timeout_s)
        answer = leader.ask(
            {
                "cmd": "load",
                "commands": workload.commands,
                "clients": workload.clients,
                "value_bytes": workload.value_bytes,
                "key_space": workload.key_space,
                "budget_s": workload.budget_s,
            },
            workload.budget_s + 10,
        )
    finally:
        for node in cluster:
            node.stop()
    return BaselineResult(
        nodes=nodes,
        clients=workload.clients,
        requested=answer["requested"],
        committed=answer["committed"],
        errors=answer["errors"],
        elapsed_s=answer["elapsed_s"],
        latency=Latency(answer["latency_ms"]["p50"], answer["latency_ms"]["p99"]),
        timed_out=answer["timed_out"],
        append_period_s=append_period_s,
    )


def _wait_for_leader(cluster: list[_Node], timeout_s: float) -> _Node:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in cluster:
            status = node.ask({"cmd": "status"}, timeout_s)
            if status["leader"] and status["ready"]:
                return node
        time.sleep(0.05)
    raise RuntimeError(f"pysyncobj: no leader within {timeout_s} s")
