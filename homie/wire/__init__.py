"""The job channel between daemons: frames and the conversation state machine
(protocol, sans-IO), message schemas (messages), the socket wrapper that does
only I/O (channel), mutual TLS from the group key (trust)."""
