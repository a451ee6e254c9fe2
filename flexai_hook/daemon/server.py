"""flexaid's socket loop: one thread applies every request, so the ledger needs no locks.

What it applied is made durable by flexaid's writer process (`_Committer`, writer.py: slice
files, then one journal append and fdatasync for the whole batch) while the loop goes on
applying the next requests; the answers of a batch go out once it is on disk.

Non-blocking sockets under `selectors`: a client that connects and never writes, sends half a
line, or floods megabytes costs only its own buffer, never another client's answer. Peers are
checked with SO_PEERCRED (root, or the socket's group). The same loop serves the opt-in
Prometheus endpoint, pings the systemd watchdog, and applies reconciliation results that a
helper thread gathers by asking the container runtimes (slow subprocesses stay off the loop).
"""

from __future__ import annotations

import errno
import gc
import grp
import json
import logging
import os
import queue
import resource
import select
import selectors
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

import orjson

from . import access, metrics, reconcile, writer
from .batch import Persisted
from .conngate import ACCEPT_BATCH, Gate, limits_for

if TYPE_CHECKING:
    from .batch import Batch
    from .config import Config
    from .service import Service
    from .supervisor import Supervisor

log = logging.getLogger("flexaid.server")

MAX_LINE = 1 << 20  # a request is a few hundred bytes; anything near this is garbage
MAX_HTTP_HEADER = 8192
SD_LISTEN_FDS_START = 3


def _encode(reply: dict) -> bytes:
    """One answer as JSON: orjson (several times faster than json on the hot path), json for
    anything it refuses (an integer over 64 bits), so a bug costs one answer, not the loop."""
    try:
        return orjson.dumps(reply)
    except TypeError:
        return json.dumps(reply, separators=(",", ":")).encode()


class ServeError(RuntimeError):
    pass


class _Conn:
    __slots__ = ("sock", "kind", "peer", "inbuf", "outbuf", "waiting", "last", "closing", "closed", "events")

    def __init__(self, sock: socket.socket, kind: str, peer: access.Peer | None = None):
        self.sock = sock
        self.kind = kind  # "api" or "metrics"
        self.peer = peer  # SO_PEERCRED, read once at accept: judges each request (access.py)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.waiting = 0  # answers held by the committer until their batch is on disk
        self.last = time.monotonic()
        self.closing = False
        self.closed = False
        self.events = selectors.EVENT_READ  # what the selector watches for it


# a connection, an answer for it, the container it is about, the op (a metrics label) and when
# the request arrived (time.monotonic(): its latency ends when the answer is released)
Held = tuple[_Conn, dict, "str | None", "str | None", float]


class _Committer:
    """Hands batches to the writer process, one at a time, and holds their answers meanwhile.

    Answers are released in the order they were made, so one connection's answers never
    overtake each other. While a batch is being written, newly applied requests collect in
    the next one (group commit: the busier the daemon, the more requests share an fsync).
    """

    def __init__(self, service: "Service", sel: selectors.BaseSelector):
        self.service = service
        self.sel = sel
        self.writer = writer.Writer()
        sel.register(self.writer, selectors.EVENT_READ, "writer")  # wakes the loop when it is done
        self.pending: list[Held] = []  # answers of requests applied since the last hand-off
        self.busy: tuple["Batch", writer.Plan, list[Held]] | None = None  # the batch being written
        self.ready: list[tuple[_Conn, dict]] = []  # answers that may go out now

    def hold(self, conn: _Conn, reply: dict, container_id: str | None = None, op: str | None = None,
             started: float | None = None) -> None:
        conn.waiting += 1
        self.pending.append((conn, reply, container_id, op, time.monotonic() if started is None else started))

    def _outcome(self, wait: bool) -> writer.Outcome | None:
        if not wait and not select.select([self.writer], [], [], 0)[0]:
            return None
        try:
            return self.writer.receive()
        except writer.WriterGone as exc:
            # What it did of the plan is unknown: answer errors, roll back in memory, and let
            # the next batch write the ledger as the daemon knows it.
            log.error("%s; restarting it", exc)
            self.sel.unregister(self.writer)
            self.writer.restart()
            self.sel.register(self.writer, selectors.EVENT_READ, "writer")
            return writer.Outcome(error=f"{exc}; retry", dirty=True)

    def advance(self, wait: bool = False) -> None:
        """Collect a finished batch and hand off the next; with `wait`, until all is on disk."""
        while True:
            if self.busy is not None:
                outcome = self._outcome(wait)
                if outcome is None:
                    return
                batch, plan, held = self.busy
                self.busy = None
                result = self.service.persisted(batch, plan, outcome)
                self.service.finish(batch, result)
                self._release(held, result)
                # What was applied after the batch was built on it (Service.finish): on a failed
                # write it is gone too; a reservation whose files failed is refused everywhere.
                if result.error:
                    self._release(self.pending, result)
                    self.pending = []
                elif result.failed:
                    lost = Persisted(None, result.failed)
                    self.pending = [(c, self.service.settle(r, op, cid, lost), cid, op, t)
                                    for c, r, cid, op, t in self.pending]
            if self.pending:
                batch = self.service.take_batch()
                if batch is None:  # nothing to write: answer at once
                    self._release(self.pending, None)
                    self.pending = []
                else:
                    plan = self.service.plan(batch)
                    self.busy = (batch, plan, self.pending)
                    self.pending = []
                    try:
                        self.writer.send(plan)
                    except writer.WriterGone:
                        pass  # receive() reports it and restarts the writer
            if not wait or self.busy is None:
                return

    def _release(self, held: list[Held], result: Persisted | None) -> None:
        now = time.monotonic()
        stats, settle = self.service.stats, self.service.settle
        for conn, reply, cid, op, started in held:
            conn.waiting -= 1
            stats.observe(op, now - started)
            self.ready.append((conn, settle(reply, op, cid, result)))

    def stop(self) -> None:
        """Write and answer everything applied, then end the writer."""
        self.advance(wait=True)
        self.close()

    def close(self) -> None:
        if self.writer.proc is not None:
            self.sel.unregister(self.writer)
            self.writer.stop()


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return 0


def peer_allowed(peer: access.Peer, gid: int) -> tuple[bool, str]:
    """Root, or a process whose primary or supplementary groups include the socket's group."""
    pid, uid, pgid = peer
    if uid == 0 or (gid != 0 and pgid == gid):
        return True, ""
    if gid != 0:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:") and str(gid) in line.split()[1:]:
                        return True, ""
        except OSError:
            pass
    return False, f"uid {uid} (pid {pid}) is neither root nor in the socket's group"


def listening_socket(config: "Config") -> tuple[socket.socket, bool]:
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
        raise ServeError(f"another flexaid already listens on {path}")
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
    os.chown(path, 0, group_id(config.socket_group))
    os.chmod(path, config.socket_mode)
    sock.listen(512)
    return sock, True


def metrics_socket(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise ServeError(f"cannot serve metrics on {listen!r}: {exc}") from None
    sock.listen(64)
    return sock


class _Reconciler:
    """Asks the runtimes about each reserved container in a helper thread, every interval."""

    def __init__(self, interval: float, wake_fd: int, runtimes: frozenset[str]):
        self.interval = interval
        self.wake_fd = wake_fd
        self.runtimes = runtimes  # the only binaries it may run (reconcile.runtimes)
        self.results: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.next_run = time.monotonic() + interval

    def maybe_start(self, reservations: dict, now: float) -> None:
        if self.interval <= 0 or now < self.next_run or (self.thread and self.thread.is_alive()):
            return
        self.next_run = now + self.interval
        snapshot = dict(reservations)  # the ledger maps are replaced, never mutated: safe to share

        def work() -> None:
            observed = {cid: reconcile.observe(r, self.runtimes) for cid, r in snapshot.items()}
            self.results.put(observed)
            try:
                os.write(self.wake_fd, b"r")
            except OSError:
                pass

        self.thread = threading.Thread(target=work, name="reconcile", daemon=True)
        self.thread.start()


def serve(service: "Service", config: "Config", supervisor: "Supervisor") -> None:
    listener, owned = listening_socket(config)
    listener.setblocking(False)
    socket_gid = group_id(config.socket_group)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "api")
    metrics_listener = None
    if config.metrics_listen:
        metrics_listener = metrics_socket(config.metrics_listen)
        metrics_listener.setblocking(False)
        sel.register(metrics_listener, selectors.EVENT_READ, "metrics")
        log.info("Prometheus metrics on http://%s/metrics", config.metrics_listen)
    # Connection caps below the descriptor limit (conngate.py): a flood of idle clients must
    # not leave flexaid unable to accept the runtimes' and hooks' connections.
    fd_free = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - len(os.listdir("/proc/self/fd"))
    limits = limits_for(fd_free, config.max_connections,
                        config.max_connections_per_uid, config.idle_timeout, config.partial_timeout)
    gate = Gate(limits, time.monotonic())
    listener_tags = {listener.fileno(): "api"}
    if metrics_listener is not None:
        listener_tags[metrics_listener.fileno()] = "metrics"
    log.info("connections: at most %d, %d per non-root uid; idle ones close after %gs, half-sent lines after %gs",
             limits.total, limits.per_uid, limits.idle, limits.partial)
    conns: dict[int, _Conn] = {}
    # Signals and the reconcile thread only write to this pipe, so a request being applied is
    # always finished and answered before anything else happens.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    signal.set_wakeup_fd(wake_w)
    stopping: list[int] = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reconciler = _Reconciler(config.reconcile_interval, wake_w, frozenset(config.reconcile_runtimes))
    committer = _Committer(service, sel)

    def close(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conns.pop(id(conn), None)
        gate.closed(conn)
        conn.sock.close()
        conn.closed = True  # answers still held for it are dropped

    def deliver() -> dict[int, _Conn]:
        """Queue the answers the committer released; the connections that got some."""
        got: dict[int, _Conn] = {}
        for conn, reply in committer.ready:
            if not conn.closed:
                conn.outbuf += _encode(reply) + b"\n"
                got[id(conn)] = conn
        committer.ready.clear()
        return got

    def flush(touched: dict[int, _Conn]) -> None:
        """Send what the connections in `touched` are owed; close those that are done."""
        for conn in touched.values():
            if conn.closed:
                continue
            if conn.outbuf and not _write(conn):
                close(conn)
            elif conn.closing and not conn.outbuf and not conn.waiting:
                close(conn)
            else:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
                if events != conn.events:  # an epoll_ctl only when the interest changes
                    sel.modify(conn.sock, events, conn)
                    conn.events = events

    # Everything built so far (schemas, validators, placement tables) lives as long as the
    # daemon: keep it out of the collector's scans, which otherwise add milliseconds to the
    # request that happens to trigger a full collection.
    gc.collect()
    gc.freeze()
    summary = service.summary()
    log.info("flexaid ready on %s: %s", config.socket, summary)
    supervisor.ready(summary)
    timeout = min(supervisor.loop_timeout(1.0), gate.period)  # the timeout sweep needs its turns

    try:
        while not stopping:
            touched: dict[int, _Conn] = {}
            ready = sel.select(timeout=timeout)
            if committer.busy is not None and any(key.data == "writer" for key, _ in ready):
                # The writer is done: collect its batch, hand it the next, and send the answers
                # now on disk before applying this round's requests, so neither the writer nor
                # those clients wait while the loop applies them.
                committer.advance()
                flush(deliver())
            for key, events in ready:
                tag = key.data
                if tag == "writer":
                    continue  # collected above, or by committer.advance below
                if tag == "wake":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                if tag in ("api", "metrics"):
                    for _ in range(ACCEPT_BATCH):  # drain a backlog without a loop turn each
                        if not _accept(key.fileobj, tag, sel, conns, socket_gid, gate, close):
                            break
                    continue
                conn: _Conn = tag
                if conn.closed:  # by the flush above
                    continue
                if events & selectors.EVENT_READ and not _read(conn, service, committer):
                    close(conn)
                    continue
                touched[id(conn)] = conn
            while not reconciler.results.empty():
                if service.apply_observations(reconciler.results.get_nowait(), time.time()):
                    supervisor.status(service.summary())
            # Hand what this round applied to the committer (or let it join the batch being
            # written), and send the answers of whatever batch is now on disk.
            committer.advance()
            touched.update(deliver())
            flush(touched)
            now = time.monotonic()
            supervisor.tick(now)
            reconciler.maybe_start(service.ledger.reservations, now)
            for conn in gate.expired(conns, now):  # idle, or a line left half-sent
                close(conn)
            gate.maybe_resume(sel, now, listener_tags)
            gate.maybe_log(now)
        log.info("signal %d: stopping", stopping[0])
        supervisor.stopping()
        committer.stop()  # what was applied is written, and answered where the client still listens
        for conn in deliver().values():
            _write(conn)
    finally:
        committer.close()
        signal.set_wakeup_fd(-1)
        for conn in list(conns.values()):
            close(conn)
        sel.close()
        os.close(wake_r)
        os.close(wake_w)
        listener.close()
        if metrics_listener is not None:
            metrics_listener.close()
        if owned:
            try:
                os.unlink(config.socket)
            except FileNotFoundError:
                pass
        log.info("flexaid stopped")


def _accept(listener: socket.socket, kind: str, sel: selectors.BaseSelector, conns: dict, gid: int,
            gate: Gate, close) -> bool:
    """Accept one client (or refuse it); False when there is none left to accept."""
    try:
        sock, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            gate.out_of_fds(listener, sel, time.monotonic())  # no spinning on a readable listener
            return False
        raise
    peer = None
    if kind == "api":
        peer = access.peer_of(sock)
        allowed, why = peer_allowed(peer, gid)
        if not allowed:
            log.warning("refused a client: %s", why)
            try:
                sock.sendall(json.dumps({"ok": False, "error": f"permission denied: {why}"}).encode() + b"\n")
            except OSError:
                pass
            sock.close()
            return True
    sock.setblocking(False)
    uid = peer.uid if peer is not None else None  # None: a metrics (TCP) client
    why = gate.admit(uid)
    if why == "evict":  # root at the cap: the runtimes and hooks must get through
        victim = gate.victim(conns)
        why = None if victim is not None else f"flexaid holds {len(conns)} connections, its limit"
        if victim is not None:
            gate.note("evicted for root")
            close(victim)
    if why:
        gate.note("refused (per-uid cap)" if why.startswith("too many") else "refused (total cap)")
        try:  # one line, never waiting on a client that does not read
            sock.send(orjson.dumps({"ok": False, "error": f"{why}; close some and retry"}) + b"\n")
        except OSError:
            pass
        sock.close()
        return True
    conn = _Conn(sock, kind, peer)
    conns[id(conn)] = conn
    sel.register(sock, selectors.EVENT_READ, conn)
    gate.opened(conn, uid)
    return True


def _read(conn: _Conn, service: "Service", committer: _Committer) -> bool:
    try:
        data = conn.sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    if not data:
        return bool(conn.outbuf)  # peer finished writing; flush what we owe it
    conn.last = time.monotonic()
    if conn.closing:
        return True  # discard what follows a refused request until our answer is out
    if conn.kind == "metrics":
        conn.inbuf += data
        return _read_http(conn, service)
    if not conn.inbuf and data.find(b"\n") == len(data) - 1:
        # the usual case: one whole request line, nothing before it (no copy into inbuf)
        _apply(conn, data, service, committer)
        return True
    conn.inbuf += data
    while True:
        nl = conn.inbuf.find(b"\n")
        if nl < 0:
            if len(conn.inbuf) > MAX_LINE:
                committer.hold(conn, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                conn.inbuf.clear()
                conn.closing = True
            return True
        line = bytes(conn.inbuf[:nl])
        del conn.inbuf[: nl + 1]
        _apply(conn, line, service, committer)


def _apply(conn: _Conn, line: bytes, service: "Service", committer: _Committer) -> None:
    """Apply one request line (its newline may still end it: JSON whitespace) and hold its answer."""
    started = time.monotonic()
    try:
        message = orjson.loads(line)
    except ValueError:  # orjson.JSONDecodeError is one, and so is invalid UTF-8
        committer.hold(conn, {"ok": False, "error": "request is not a JSON object on one line"}, started=started)
        return
    is_dict = isinstance(message, dict)
    op = message.get("op") if is_dict else None
    if op == "update":
        # an update rewrites slice files in place: first let every slice being created
        # reach the disk (updates are rare, from the CLI)
        committer.advance(wait=True)
    try:
        reply = service.handle(message, conn.peer)
    except Exception as exc:  # a bug must cost one request, not the daemon
        log.exception("internal error handling %r", line[:200])
        reply = {"ok": False, "error": f"flexaid internal error: {type(exc).__name__}: {exc}"}
    committer.hold(conn, reply, message.get("container_id") if is_dict else None,
                   op if isinstance(op, str) else None, started)


def _read_http(conn: _Conn, service: "Service") -> bool:
    end = conn.inbuf.find(b"\r\n\r\n")
    if end < 0:
        if len(conn.inbuf) > MAX_HTTP_HEADER:
            _http(conn, 431, "text/plain", "request header too large\n")
        return True
    request_line = bytes(conn.inbuf[: conn.inbuf.find(b"\r\n")]).decode("latin-1").split()
    if len(request_line) != 3 or request_line[0] not in ("GET", "HEAD"):
        _http(conn, 405, "text/plain", "only GET /metrics\n")
    elif request_line[1].split("?")[0] != "/metrics":
        _http(conn, 404, "text/plain", "see /metrics\n")
    else:
        body = metrics.render(service.status(), service.stats)
        _http(conn, 200, metrics.CONTENT_TYPE, body if request_line[0] == "GET" else "", len(body.encode()))
    return True


def _http(conn: _Conn, code: int, ctype: str, body: str, length: int | None = None) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large"}[code]
    data = body.encode()
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(data) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    conn.outbuf += head.encode() + data
    conn.inbuf.clear()
    conn.closing = True
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
