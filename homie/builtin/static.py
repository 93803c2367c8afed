"""Discovery through a fixed list of addresses (`static_peers` in config).

For networks that block broadcast (client isolation on Wi-Fi, some routers):
heartbeats go by unicast UDP to each listed host, signed exactly like
broadcast ones, and the peers' answers come back the same way.
"""

from __future__ import annotations

from homie.api import DiscoveryContext, hookimpl


class StaticPeers:
    name = "static"

    def __init__(self, ctx: DiscoveryContext):
        self.ctx = ctx

    def start(self) -> None:
        if not self.ctx.config.static_peers:
            self.ctx.log.warning("discovery.static_empty", hint="discovery lists 'static' but static_peers is empty")

    def announce(self, packet: bytes) -> None:
        for target in self.ctx.config.static_addresses:
            self.ctx.sendto(packet, target)

    def stop(self) -> None:
        pass


@hookimpl
def homie_discovery_backends():
    return [StaticPeers]
