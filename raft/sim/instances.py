"""The function instances that host the servers' node handlers, as Flex Consumption scales
them (issue 10): each non-HTTP function runs on its own instances, each instance keeping a
warm node handler (and so a cached copy of the state) per server it has served.

- The **timer instance** runs the one timer function, which ticks every server: every tick
  is handled there.
- Each server's Service Bus trigger runs on **trigger instances** of its own: deliveries go
  to the first; a `race` fault sends one to the second, which scaled out and whose copy is
  usually long stale.

So a server's ticks and its messages are handled by different handlers, whose copies go
stale as soon as the other saves, and stay stale until that handler runs again: exactly the
situation the node handler must validate its cache in. A `cold_instance` fault replaces one
instance by a fresh one (no cached state), as the platform does when it recycles or scales
in and out; a crashed server loses its handlers on every instance.
"""

from __future__ import annotations

from collections.abc import Callable

from raft.node.handler import NodeHandler

HandlerMaker = Callable[[str], NodeHandler]
# Trigger instances per server: the usual one and one that scaled out.
TRIGGERS = 2


class Instances:
    def __init__(self, servers: tuple[str, ...], make: HandlerMaker) -> None:
        self.servers = servers
        self.timer = {s: make(s) for s in servers}
        self.triggers = {s: tuple(make(s) for _ in range(TRIGGERS)) for s in servers}

    @property
    def count(self) -> int:
        """Instances that can be replaced: the timer's, then each server's triggers."""
        return 1 + TRIGGERS * len(self.servers)

    def for_tick(self, server: str) -> NodeHandler:
        return self.timer[server]

    def for_delivery(self, server: str, scaled_out: bool) -> NodeHandler:
        return self.triggers[server][1 if scaled_out else 0]

    def replace(self, which: int) -> str:
        """Replace instance `which` (see `count`) by a cold one; returns its name."""
        if which == 0:
            for handler in self.timer.values():
                handler.drop_cache()
            return "the timer instance"
        server = self.servers[(which - 1) // TRIGGERS]
        trigger = (which - 1) % TRIGGERS
        self.triggers[server][trigger].drop_cache()
        return f"trigger instance {trigger + 1} of {server}"

    def crash(self, server: str) -> None:
        """The server's handlers on every instance lose their caches."""
        self.timer[server].drop_cache()
        for handler in self.triggers[server]:
            handler.drop_cache()
