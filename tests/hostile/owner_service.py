"""A service the lender's owner runs for themselves: on 127.0.0.1:PORT and on
the abstract unix socket @homie-owner-MARK (as X11, D-Bus and many local tools
do), answering anyone who connects with a private line.

argv: MARK PORT
"""
import socket
import sys
import threading

mark, port = sys.argv[1], int(sys.argv[2])
reply = f"OWNER-PRIVATE-{mark}\n".encode()


def serve(sock):
    while True:
        conn, _ = sock.accept()
        try:
            conn.sendall(reply)
        finally:
            conn.close()


tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port))
tcp.listen(16)
uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
uds.bind(f"\0homie-owner-{mark}")
uds.listen(16)
threading.Thread(target=serve, args=(uds,), daemon=True).start()
print("listening", flush=True)
serve(tcp)
