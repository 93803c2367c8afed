"""Signed discovery: heartbeats out through the discovery backends, verified
heartbeats in to the peer table.

One UDP socket serves every backend. Packets that fail verification are
dropped silently (a summary is logged at most every 10 s), and a peer's
address is the packet's source, never what the packet claims.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from homie import __version__, plugins
from homie.discovery.heartbeat import Signer, Verifier

if TYPE_CHECKING:
    from homie.discovery.peers import PeerTable

PROBE_ANSWER_INTERVAL = 0.25  # at most this often per asking address
NONCE_TTL = 5.0  # an answer to a probe of ours counts as fresh for this long
CHALLENGE_INTERVAL = 0.5  # at most this often per unknown instance


class Warner(Protocol):
    """The daemon's rate-limited warnings (one line per event per period)."""

    def due(self, event: str) -> bool: ...
    def warn(self, event: str, msg: str, **kw: Any) -> None: ...


class Discovery:
    """The discovery socket and backends: heartbeats out (what `heartbeat_fields`
    says), verified heartbeats in to `peers`, `on_peers_changed` when that table changes."""

    def __init__(self, config: Any, log: Any, key: bytes, instance: bytes, name: str, bind_address: str | None,
                 peers: PeerTable, heartbeat_fields: Callable[[], dict], on_peers_changed: Callable[[], None],
                 rate: Warner):
        self.config = config
        self.log = log
        self.name = name
        self.instance = instance
        self.bind_address = bind_address
        self.peers = peers
        self.heartbeat_fields = heartbeat_fields
        self.on_peers_changed = on_peers_changed
        self.rate = rate
        self.signer = Signer(key, instance)
        self.verifier = Verifier(key)
        self.sock: socket.socket | None = None
        self.rx: list[socket.socket] = []
        self.backends: list[Any] = []
        self._send_lock = threading.Lock()
        # Encoding assigns the sequence number: encode and send under one lock,
        # or two threads could put seq n+1 on the wire before n, and receivers
        # would drop n as a replay.
        self._tx_lock = threading.RLock()
        self._announce = threading.Event()
        self._probe_answers: dict[str, tuple] = {}  # ip -> (when, nonce) of our last answer
        self._rounds: dict[str, set] = {}  # probe nonce -> (name, ip) of peers that answered it
        self._nonces: dict[str, float] = {}  # nonces of our probes -> when issued
        self._challenged: dict[str, float] = {}  # unknown instance -> when we last challenged it

    # -- addresses -------------------------------------------------------------
    def interfaces(self) -> list[dict]:
        """IPv4 interfaces discovery may use, honouring `interface`/`bind`."""
        import psutil

        out = []
        for ifname, addrs in psutil.net_if_addrs().items():
            for a in addrs:
                if a.family != socket.AF_INET or a.address.startswith("127."):
                    continue
                if self.config.interface and ifname != self.config.interface:
                    continue
                if self.config.bind and a.address != self.config.bind:
                    continue
                out.append({"interface": ifname, "address": a.address, "broadcast": a.broadcast,
                            "netmask": a.netmask})
        return out

    def broadcast_addresses(self) -> list[str]:
        return sorted({i["broadcast"] for i in self.interfaces() if i["broadcast"]})

    # -- socket ------------------------------------------------------------------
    def _socket(self, addr: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            s.bind((addr, self.config.discovery_port))
        except OSError as e:
            s.close()
            from homie.errors import HomieError

            raise HomieError(f"cannot listen for discovery on UDP {addr or '*'}:{self.config.discovery_port}:"
                             f" {e.strerror} (set `discovery_port:` in config or pass --discovery-port)") from None
        return s

    def bind(self) -> None:
        bind = self.bind_address
        if bind:
            # Pinned to one address (bind/interface): unicast arrives on that
            # address, broadcasts on the subnet's broadcast address, which
            # needs a socket of its own (Linux delivers a broadcast only to
            # sockets bound to the wildcard or to that broadcast address).
            self.sock = self._socket(bind)
            self.rx = [self.sock] + [self._socket(b) for b in self.broadcast_addresses()]
        else:
            self.sock = self._socket("")
            self.rx = [self.sock]
        enabled = list(self.config.discovery)
        found: dict[str, Any] = {}
        for group in plugins.call("homie_discovery_backends"):
            for cls in group or []:
                found.setdefault(cls.name, cls)
        for name in enabled:
            if name not in found:
                self.log.warning("discovery.unknown_backend", backend=name, known=sorted(found))
                continue
            self.backends.append(found[name](self))
        for b in self.backends:
            b.start()

    def sendto(self, packet: bytes, addr: tuple[str, int]) -> None:
        try:
            with self._send_lock:
                # non-blocking socket: a full send buffer drops a heartbeat, never stalls the loop
                assert self.sock is not None  # started
                self.sock.sendto(packet, addr)
        except OSError as e:
            self.rate.warn("discovery.send_failed", "cannot send heartbeat", target=f"{addr[0]}:{addr[1]}",
                           error=e.strerror or str(e))

    # -- sending -----------------------------------------------------------------
    def body(self, kind: str, **extra) -> dict:
        if kind != "hb":
            return {"k": kind, "name": self.name, "port": self.config.port, **extra}
        body = {"k": "hb", "name": self.name, "port": self.config.port, "v": __version__}
        body.update(self.heartbeat_fields())
        body["timestamp"] = int(time.time())
        body.update(extra)
        return body

    def packet(self, kind: str, **extra) -> bytes:
        body = self.body(kind, **extra)
        try:
            return self.signer.encode(body)
        except ValueError:
            # Too many GPUs or a huge karma table: drop the detail, keep the essentials.
            body.pop("gpus", None)
            body.pop("karma", None)
            return self.signer.encode(body)

    def announce(self, kind: str = "hb", **extra) -> None:
        with self._tx_lock:
            packet = self.packet(kind, **extra)
            for b in self.backends:
                try:
                    b.announce(packet)
                except Exception as e:
                    self.rate.warn("discovery.backend_failed", "discovery backend failed",
                                   backend=b.name, error=str(e))

    def reply(self, kind: str, addr: tuple[str, int], **extra) -> None:
        with self._tx_lock:
            self.sendto(self.packet(kind, **extra), addr)

    def _note_dropped(self) -> None:
        if self.rate.due("discovery.dropped"):
            self.rate.warn("discovery.dropped", "ignored heartbeats that failed verification",
                           counts=dict(self.verifier.dropped))

    def announce_soon(self) -> None:
        self._announce.set()

    def heartbeat_loop(self, stop: threading.Event) -> None:
        self.announce("hb")
        # A probe makes everyone answer at once: a new node sees its peers in
        # well under a second instead of after a heartbeat interval (and the
        # answers carry our nonce, so they count as fresh first contact).
        self.announce("probe", nonce=self._nonce())
        while not stop.is_set():
            fired = self._announce.wait(self.config.heartbeat_interval)
            if stop.is_set():
                break
            if fired:
                time.sleep(0.05)  # coalesce bursts (several jobs ending at once)
                self._announce.clear()
            self.announce("hb")

    def _nonce(self) -> str:
        import secrets

        nonce = secrets.token_hex(8)
        now = time.monotonic()
        with self._send_lock:
            self._nonces[nonce] = now
            if len(self._nonces) > 4096:
                for n in [n for n, t in self._nonces.items() if now - t > NONCE_TTL]:
                    del self._nonces[n]
        return nonce

    def _fresh(self, answer) -> bool:
        if not isinstance(answer, str):
            return False
        issued = self._nonces.get(answer)
        return issued is not None and time.monotonic() - issued <= NONCE_TTL

    def _challenge(self, inst: str, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        if now - self._challenged.get(inst, 0.0) < CHALLENGE_INTERVAL:
            return
        self._challenged[inst] = now
        if len(self._challenged) > 4096:
            self._challenged.clear()
        self.log.debug("discovery.challenge", instance=inst[:8], to=addr[0])
        self.reply("probe", addr, nonce=self._nonce(), to=inst)

    def probe_round(self, wait: float = 1.0) -> set:
        """Probe through every backend; return the (name, ip) of peers that
        heard this probe and whose answer came back (used by `homie doctor`)."""
        nonce = self._nonce()
        self._rounds[nonce] = set()
        try:
            self.announce("probe", nonce=nonce)
            time.sleep(wait)
            return set(self._rounds[nonce])
        finally:
            self._rounds.pop(nonce, None)

    def goodbye(self) -> None:
        try:
            self.announce("bye")
        except Exception:
            pass

    # -- receiving -----------------------------------------------------------------
    def receive_loop(self, stop: threading.Event) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in self.rx:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while not stop.is_set():
            try:
                ready = sel.select(timeout=0.5)
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.05)
                continue
            for key, _ in ready:
                # Drain what is queued: heartbeats come in bursts (many peers,
                # or a flood), and one select() per packet would double the cost.
                for _ in range(256):
                    try:
                        data, addr = cast(socket.socket, key.fileobj).recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        if stop.is_set():
                            return
                        break
                    try:
                        self.receive(data, addr)
                    except Exception as e:  # nothing a packet does may stop discovery
                        self.rate.warn("discovery.receive_failed", "bad packet handling", error=repr(e))

    def receive(self, data: bytes, addr: tuple[str, int]) -> None:
        hb = self.verifier.verify(data, source=addr[0])
        if hb is None:
            self._note_dropped()
            return
        if hb.instance == self.instance:
            return  # our own broadcast
        ip = addr[0]
        body = hb.body
        kind = body.get("k")
        inst = hb.instance.hex()
        if kind == "bye":
            peer = self.peers.goodbye(inst)
            if peer:
                self.log.info("peer.gone", name=peer.name, ip=ip, why="goodbye")
                self.on_peers_changed()
            return
        if kind == "probe":
            # Answered only to the asking address, once per nonce and at most
            # every PROBE_ANSWER_INTERVAL per address otherwise: replayed probes
            # cannot make us send more than one packet for one.
            nonce = body.get("nonce")
            nonce = nonce if isinstance(nonce, str) and len(nonce) <= 32 else None
            now = time.monotonic()
            last_at, last_nonce = self._probe_answers.get(ip, (0.0, None))
            if (nonce is not None and nonce != last_nonce) or now - last_at >= PROBE_ANSWER_INTERVAL:
                self._probe_answers[ip] = (now, nonce)
                if len(self._probe_answers) > 1024:
                    self._probe_answers.clear()
                extra = {"re": nonce} if nonce else {}
                self.log.debug("discovery.answer", to=ip, nonce=nonce)
                self.reply("hb", (ip, addr[1]), **extra)
            else:
                self.log.debug("discovery.answer_limited", to=ip, nonce=nonce)
            return
        if kind != "hb" or not isinstance(body.get("name"), str) or not isinstance(body.get("port"), int):
            return
        answer = body.get("re")
        if answer is not None and answer in self._rounds:
            self._rounds[answer].add((body["name"], ip))
        if self.peers.get(inst) is None and not self._fresh(answer):
            # First contact: a valid packet may still be a replay from the last
            # 30 s (even of a peer that has since said goodbye). Only an answer
            # to a nonce of ours proves the sender holds the key right now.
            self._challenge(inst, addr)
            return
        version = self.peers.version
        peer, is_new = self.peers.update(body, ip, inst)
        if is_new:
            self.log.info("peer.seen", name=peer.name, ip=ip, port=peer.port)
        if self.peers.version != version:
            self.on_peers_changed()

    def stop(self) -> None:
        for b in self.backends:
            try:
                b.stop()
            except Exception:
                pass
        for s in getattr(self, "rx", []):
            try:
                s.close()
            except OSError:
                pass
