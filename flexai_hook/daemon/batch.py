"""A batch of applied requests on its way to disk, and what their answers become.

flexaid applies requests in memory, then makes them durable together (slice files, one ledger
write and fsync); an answer that acknowledges a change goes out only once its batch is on disk
(daemon.Service.plan / persisted / finish, writer.execute, server._Committer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flexai_hook.reservation import Reservation

from .ledger import Ledger


@dataclass
class Batch:
    """Changes applied in memory, not yet on disk: what a writer.Plan makes durable."""

    ledger: Ledger  # the ledger to write
    created: list[Reservation]  # reservations whose slice files are to be written first
    removed: list[Reservation]  # released reservations whose slice directories go once the ledger is written


@dataclass
class Persisted:
    """What became of a Batch."""

    error: str | None  # the ledger could not be written: nothing of the batch holds
    failed: dict[str, str] = field(default_factory=dict)  # container id -> why its slice files failed
    ledger: Ledger | None = None  # what is on disk now


CHANGE_KEYS = ("reservation", "released", "spec")  # answers that acknowledge a change


def answer(reply: dict, container_id: str | None, result: Persisted | None) -> dict:
    """`reply` as it may be sent once its batch is persisted: a change that did not become
    durable is not acknowledged (a prepare's "spec" carries a reservation too)."""
    if result is None or not reply.get("ok") or not any(k in reply for k in CHANGE_KEYS):
        return reply
    if result.error:
        return {"ok": False, "error": result.error}
    if container_id in result.failed:
        return {"ok": False, "error": result.failed[container_id]}
    return reply
