"""Finding peers: signed heartbeats (heartbeat), the UDP socket and the backends
that send them (service), and the table of who is alive (peers)."""
