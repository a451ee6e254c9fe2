"""flexaid: the one process that knows who holds which part of which card on this host.

`Service` is the logic (ledger, placement, slice files); `serve` is the socket shell around it:
a single-threaded selectors loop, so requests are applied one at a time without locks and a
slow or silent client never blocks the others.
"""

from __future__ import annotations

import argparse
import errno
import grp
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import devices, ledger as ledger_mod, placement, validation
from .atomicfile import write_atomically
from .request import Request

log = logging.getLogger("flexaid")

DEFAULT_CONFIG = "/etc/flexai/flexaid.json"
MAX_LINE = 1 << 20  # a request is a few hundred bytes; anything near this is garbage
IDLE_TIMEOUT = 60.0
SD_LISTEN_FDS_START = 3
OPS = ("reserve", "release", "status")


@dataclass(frozen=True)
class Config:
    socket: str = "/run/flexai/flexaid.sock"
    socket_mode: int = 0o660
    socket_group: str = "flexai"
    state_dir: str = "/var/lib/flexai"
    slices_dir: str = "/run/flexai/slices"
    backend: str = "auto"
    policy: str = placement.DEFAULT_POLICY
    simulated_cards: tuple = ()


class ConfigError(RuntimeError):
    pass


def load_config(path: str | None) -> Config:
    """The daemon config from `path` (JSON); defaults when the default path does not exist."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return Config()
        path = DEFAULT_CONFIG
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    problem = validation.problem("daemon-config.schema.json", data)
    if problem:
        raise ConfigError(f"config file {path}: {problem}")
    if data.get("policy", placement.DEFAULT_POLICY) not in placement.POLICIES:
        raise ConfigError(
            f"config file {path}: policy {data['policy']!r} is not one of {', '.join(placement.POLICIES)}"
        )
    return Config(
        socket=data.get("socket", Config.socket),
        socket_mode=int(data.get("socket_mode", "0660"), 8),
        socket_group=data.get("socket_group", Config.socket_group),
        state_dir=data.get("state_dir", Config.state_dir),
        slices_dir=data.get("slices_dir", Config.slices_dir),
        backend=data.get("backend", Config.backend),
        policy=data.get("policy", Config.policy),
        simulated_cards=tuple(data.get("simulated", {}).get("cards", ())),
    )


class Service:
    """Applies protocol messages to the ledger. Every change is on disk before it is answered."""

    def __init__(self, config: Config, cards: Sequence[devices.Card]):
        self.config = config
        self.cards = list(cards)
        self.backend = self.cards[0].backend if self.cards else "none"
        self.file = ledger_mod.LedgerFile(Path(config.state_dir) / "ledger.json")
        self.ledger = self.file.load()
        os.makedirs(config.slices_dir, exist_ok=True)
        self._sync_slice_dirs()
        for op in OPS:  # build the validators now, not on the first container start
            validation.validator("protocol.schema.json", f"{op}_message")

    def _sync_slice_dirs(self) -> None:
        """Slice files for every reservation, none for slices the ledger does not hold."""
        wanted = {r.slice_id: r for r in self.ledger.reservations.values()}
        for name in os.listdir(self.config.slices_dir):
            if name not in wanted:
                shutil.rmtree(os.path.join(self.config.slices_dir, name), ignore_errors=True)
        for reservation in wanted.values():
            self._write_slice_files(reservation)

    def _write_slice_files(self, reservation) -> None:
        os.makedirs(reservation.slice_dir, mode=0o755, exist_ok=True)
        write_atomically(Path(reservation.slice_dir) / "slice.conf", reservation.slice_conf().encode())

    def handle(self, message: object) -> dict:
        op = message.get("op") if isinstance(message, dict) else None
        if op not in OPS:
            return {"ok": False, "error": f"invalid request: op must be one of {', '.join(OPS)}, not {op!r}"[:300]}
        problem = validation.problem("protocol.schema.json", message, f"{op}_message")
        if problem:
            return {"ok": False, "error": f"invalid request: {problem}"}
        if op == "reserve":
            return self._reserve(message["container_id"], Request.from_json(message["request"]))
        if op == "release":
            # From a poststop hook the id comes inside the OCI state it forwards.
            cid = message["container_id"] if "container_id" in message else message["state"]["id"]
            return self._release(cid)
        return {"ok": True, "status": self.status()}

    def _reserve(self, container_id: str, request: Request) -> dict:
        try:
            new, reservation = ledger_mod.reserve(
                self.ledger,
                self.cards,
                container_id,
                request,
                policy=self.config.policy,
                slice_root=self.config.slices_dir,
                now=time.time(),
            )
        except ledger_mod.PlacementError as exc:
            log.warning("cannot place %s: %s", container_id, exc)
            return {"ok": False, "error": str(exc)}
        if new is not self.ledger:
            self._write_slice_files(reservation)
            try:
                self.file.save(new)
            except OSError as exc:
                shutil.rmtree(reservation.slice_dir, ignore_errors=True)
                log.error("cannot save ledger: %s", exc)
                return {"ok": False, "error": f"flexaid cannot save its ledger: {exc}"}
            self.ledger = new
            log.info(
                "reserved slice %s for %s on card %d (%s): %d bytes, %d%% compute",
                reservation.slice_id, container_id, reservation.card_index,
                reservation.card_uuid, reservation.memory_bytes, reservation.compute,
            )
        return {"ok": True, "reservation": reservation.to_json()}

    def _release(self, container_id: str) -> dict:
        new, gone = ledger_mod.release(self.ledger, container_id)
        if gone is None:
            return {"ok": True, "released": False}
        try:
            self.file.save(new)
        except OSError as exc:
            log.error("cannot save ledger: %s", exc)
            return {"ok": False, "error": f"flexaid cannot save its ledger: {exc}"}
        self.ledger = new
        shutil.rmtree(gone.slice_dir, ignore_errors=True)
        log.info("released slice %s of %s on card %d", gone.slice_id, container_id, gone.card_index)
        return {"ok": True, "released": True, "reservation": gone.to_json()}

    def status(self) -> dict:
        cards = []
        for card in self.cards:
            memory, compute = self.ledger.used(card.index)
            cards.append(
                {
                    "index": card.index,
                    "uuid": card.uuid,
                    "name": card.name,
                    "memory": card.memory,
                    "memory_reserved": memory,
                    "compute_reserved": compute,
                    "device_paths": list(card.device_paths),
                    "slices": [r.to_json() for r in self.ledger.on_card(card.index)],
                }
            )
        return {"backend": self.backend, "policy": self.config.policy, "cards": cards}


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "last", "closing")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = time.monotonic()
        self.closing = False


def _listening_socket(config: Config) -> tuple[socket.socket, bool]:
    """(socket, created_by_us): the systemd-activated one if passed, else a new bound one."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
        log.info("using the socket passed by systemd")
        return sock, False
    path = config.socket
    os.makedirs(os.path.dirname(path), exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        raise ConfigError(f"another flexaid already listens on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        pass  # nothing there, or a stale socket file from a crash
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never world-accessible, not even for an instant
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    try:
        gid = grp.getgrnam(config.socket_group).gr_gid
    except KeyError:
        gid = 0
    os.chown(path, 0, gid)
    os.chmod(path, config.socket_mode)
    sock.listen(128)
    return sock, True


def serve(service: Service, config: Config, stop_after: float | None = None) -> None:
    listener, owned = _listening_socket(config)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    conns: dict[int, _Conn] = {}
    # Signals only set a flag and wake select() through this pipe, so a request being applied
    # is always finished and answered before the daemon stops.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    signal.set_wakeup_fd(wake_w)
    stopping: list[int] = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "flexaid ready on %s: %d card(s) from %s backend, %d reservation(s), policy %s",
        config.socket, len(service.cards), service.backend,
        len(service.ledger.reservations), config.policy,
    )

    def close(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    try:
        while not stopping:
            for key, events in sel.select(timeout=1.0):
                if key.data == "wake":
                    os.read(wake_r, 512)
                    continue
                if key.data is None:
                    _accept(listener, sel, conns)
                    continue
                conn: _Conn = key.data
                if events & selectors.EVENT_READ and not _read(conn, service):
                    close(conn)
                    continue
                if conn.outbuf and not _write(conn):
                    close(conn)
                    continue
                if conn.closing and not conn.outbuf:
                    close(conn)
                    continue
                sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0), conn)
            now = time.monotonic()
            for conn in [c for c in conns.values() if now - c.last > IDLE_TIMEOUT]:
                close(conn)
        log.info("signal %d: stopping", stopping[0])
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        for conn in list(conns.values()):
            close(conn)
        sel.close()
        listener.close()
        if owned:
            try:
                os.unlink(config.socket)
            except FileNotFoundError:
                pass
        log.info("flexaid stopped")


def _accept(listener: socket.socket, sel: selectors.BaseSelector, conns: dict) -> None:
    try:
        sock, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            log.error("out of file descriptors; refusing a connection")
            return
        raise
    sock.setblocking(False)
    conn = _Conn(sock)
    conns[sock.fileno()] = conn
    sel.register(sock, selectors.EVENT_READ, conn)


def _read(conn: _Conn, service: Service) -> bool:
    try:
        data = conn.sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    if not data:
        return bool(conn.outbuf)  # peer finished writing; flush what we owe it
    conn.last = time.monotonic()
    conn.inbuf += data
    while True:
        nl = conn.inbuf.find(b"\n")
        if nl < 0:
            if len(conn.inbuf) > MAX_LINE:
                _reply(conn, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                conn.inbuf.clear()
                conn.closing = True
            return True
        line = bytes(conn.inbuf[:nl])
        del conn.inbuf[: nl + 1]
        if conn.closing:
            continue
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            _reply(conn, {"ok": False, "error": "request is not a JSON object on one line"})
            continue
        try:
            reply = service.handle(message)
        except Exception as exc:  # a bug must cost one request, not the daemon
            log.exception("internal error handling %r", line[:200])
            reply = {"ok": False, "error": f"flexaid internal error: {type(exc).__name__}: {exc}"}
        _reply(conn, reply)


def _reply(conn: _Conn, reply: dict) -> None:
    conn.outbuf += json.dumps(reply, separators=(",", ":")).encode() + b"\n"
    _write(conn)


def _write(conn: _Conn) -> bool:
    try:
        sent = conn.sock.send(conn.outbuf)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    del conn.outbuf[:sent]
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flexaid",
        description="flexai daemon: places GPU slices on this host's cards and keeps the ledger.",
    )
    parser.add_argument("--config", help=f"JSON config file (default {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--socket", help="override the config's socket path")
    parser.add_argument("--state-dir", help="override the config's state_dir (holds ledger.json)")
    parser.add_argument("--slices-dir", help="override the config's slices_dir")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="flexaid: %(levelname)s %(message)s"
    )
    try:
        config = load_config(args.config)
        overrides = {
            k: v
            for k, v in (("socket", args.socket), ("state_dir", args.state_dir), ("slices_dir", args.slices_dir))
            if v
        }
        config = Config(**{**config.__dict__, **overrides})
        cards = devices.discover(config.backend, config.simulated_cards)
        if cards[0].backend == "simulated":
            devices.ensure_sim_nodes(cards)
        os.makedirs(config.state_dir, mode=0o755, exist_ok=True)
        service = Service(config, cards)
        serve(service, config)
    except (ConfigError, devices.InventoryError, ledger_mod.LedgerCorrupt) as exc:
        print(f"flexaid: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"flexaid: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
