"""One PySyncObj node for the baseline, run as its own process by `pysyncobj_baseline`.

    python -m bench.pysyncobj_node APPEND_PERIOD_S|default SELF_PORT PARTNER_PORT...

It replicates a dictionary (`ReplDict`) with `appendEntriesUseBatch=True`, listening on
127.0.0.1 only, and obeys one-line JSON commands on stdin, answering one JSON line each on
stdout:

    {"cmd": "status"}                        -> {"leader": bool, "ready": bool, ...}
    {"cmd": "load", "commands": N, "clients": C, "value_bytes": B, "key_space": K,
     "budget_s": S}                          -> {"committed": ..., "elapsed_s": ..., ...}
    {"cmd": "quit"}                          -> {"bye": true}, then exit

`load` runs on the leader: C clients each keep one write outstanding, submitted
asynchronously (`set(..., callback=...)`), and submit the next from the callback; latency is
`time.perf_counter()` from submit to callback.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

from bench.workload import Workload
from raft.hosts.latency import Latency

LOOPBACK = "127.0.0.1"


def make_conf(append_period_s: float | None) -> SyncObjConf:
    """PySyncObj's defaults (timeouts, 50 ms auto-tick, 64 KiB batches, and a leader that
    sends batched AppendEntries every `appendEntriesPeriod`, 100 ms), except a shorter
    period when asked; no journal or dump files, like the in-memory store on our side."""
    if append_period_s is None:
        return SyncObjConf(appendEntriesUseBatch=True, dynamicMembershipChange=False)
    return SyncObjConf(
        appendEntriesUseBatch=True,
        dynamicMembershipChange=False,
        appendEntriesPeriod=append_period_s,
        autoTickPeriod=append_period_s / 2,
    )


class Load:
    """`clients` writers, each with one write in flight, until `commands` are answered."""

    def __init__(self, store: ReplDict, workload: Workload) -> None:
        self.store = store
        self.workload = workload
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.issued = 0
        self.committed = 0
        self.errors = 0
        self.latencies_ms: list[float] = []

    def submit(self) -> None:
        with self.lock:
            if self.issued >= self.workload.commands:
                return
            number = self.issued
            self.issued += 1
        sent = time.perf_counter()
        key, value = self.workload.key(number), self.workload.value(number)

        def answered(result: Any, error: Any) -> None:
            # Runs on SyncObj's own thread; the next write of this client goes from here.
            at = time.perf_counter()
            with self.lock:
                if error == FAIL_REASON.SUCCESS:
                    self.committed += 1
                    self.latencies_ms.append((at - sent) * 1000)
                else:
                    self.errors += 1
                if self.committed + self.errors >= self.workload.commands:
                    self.done.set()
            self.submit()

        self.store.set(key, value, callback=answered)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        for _ in range(min(self.workload.clients, self.workload.commands)):
            self.submit()
        self.done.wait(self.workload.budget_s)
        elapsed = time.perf_counter() - started
        with self.lock:
            latency = Latency.of(self.latencies_ms)
            return {
                "requested": self.workload.commands,
                "committed": self.committed,
                "errors": self.errors,
                "elapsed_s": elapsed,
                "timed_out": not self.done.is_set(),
                "latency_ms": {"p50": latency.p50_ms, "p99": latency.p99_ms},
            }


def answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    period = None if argv[0] == "default" else float(argv[0])
    self_port, partner_ports = int(argv[1]), [int(p) for p in argv[2:]]
    store = ReplDict()
    node = SyncObj(
        f"{LOOPBACK}:{self_port}",
        [f"{LOOPBACK}:{p}" for p in partner_ports],
        consumers=[store],
        conf=make_conf(period),
    )
    try:
        for line in sys.stdin:
            request = json.loads(line)
            if request["cmd"] == "status":
                answer({"leader": node._isLeader(), "ready": node.isReady(), "keys": len(store)})
            elif request["cmd"] == "load":
                workload = Workload(
                    request["commands"],
                    request["clients"],
                    request["value_bytes"],
                    request["key_space"],
                    request["budget_s"],
                )
                answer(Load(store, workload).run())
            elif request["cmd"] == "quit":
                answer({"bye": True})
                break
    finally:
        node.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
