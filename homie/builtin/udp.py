"""Discovery by UDP broadcast on the local network (the default backend)."""

from __future__ import annotations

from homie.api import DiscoveryContext, hookimpl


class UdpBroadcast:
    """Sends heartbeats to the broadcast address of each chosen interface.

    Broadcasts go to each subnet's directed broadcast address rather than
    255.255.255.255, which Linux sends out of the default-route interface
    only (or nowhere, on a LAN without one).
    """

    name = "udp"

    def __init__(self, ctx: DiscoveryContext):
        self.ctx = ctx
        self.targets: list[tuple[str, int]] = []

    def start(self) -> None:
        port = self.ctx.config.discovery_port
        self.targets = [(b, port) for b in self.ctx.broadcast_addresses()]
        if not self.targets:
            self.ctx.log.warning("discovery.no_broadcast_address",
                                  hint="no IPv4 interface with a broadcast address; use static_peers")

    def announce(self, packet: bytes) -> None:
        for target in self.targets:
            self.ctx.sendto(packet, target)

    def stop(self) -> None:
        pass


@hookimpl
def homie_discovery_backends():
    return [UdpBroadcast]
