"""The local control socket the CLI talks to: the unix-socket server (server)
and one handler per request (handlers)."""
