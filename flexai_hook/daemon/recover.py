"""Rebuilding flexaid's ledger from the containers the runtimes really run (`flexai recover`).

Every sliced container carries its slice in its own config.json (FLEXAI_SLICE_ID and friends,
written by flexai-runtime), so when the ledger file is lost or corrupt, the live containers are
the truth: `reservations_from_containers` is the pure part, `live_containers` asks runc.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence

from flexai_hook.devices.inventory import Card
from flexai_hook.kube import pod_of
from flexai_hook.request import RequestError, from_container
from flexai_hook.reservation import Reservation


def live_containers(binary: str, roots: Iterable[str]) -> list[dict]:
    """`runc list` of each root that exists: [{id, status, bundle, root}], skipping stopped ones."""
    found = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        out = subprocess.run([binary, "--root", root, "list", "--format", "json"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"`{binary} --root {root} list` failed: {out.stderr.strip()}")
        for c in json.loads(out.stdout or "null") or []:
            if c.get("status") != "stopped":
                found.append({"id": c["id"], "status": c["status"], "bundle": c["bundle"], "root": root})
    return found


def reservation_from_spec(
    container_id: str, spec: dict, cards: Sequence[Card], slices_dir: str, runtime: dict, now: float
) -> Reservation | None:
    """The reservation a sliced container's edited spec describes; None if it has no slice."""
    env = dict(e.split("=", 1) for e in spec.get("process", {}).get("env", []) if "=" in e)
    slice_id = env.get("FLEXAI_SLICE_ID")
    if not slice_id:
        return None
    card = next((c for c in cards if c.uuid == env.get("FLEXAI_DEVICE_UUID")), None)
    if card is None:
        raise ValueError(f"container {container_id}: card {env.get('FLEXAI_DEVICE_UUID')} is not on this host")
    try:
        request = from_container(spec.get("process", {}).get("env", []), spec.get("annotations") or {})
    except RequestError:
        request = None
    return Reservation(
        container_id=container_id,
        slice_id=slice_id,
        card_index=card.index,
        card_uuid=card.uuid,
        card_name=card.name,
        card_memory=card.memory,
        memory_bytes=int(env["FLEXAI_MEMORY_LIMIT"]),
        compute=int(env["FLEXAI_COMPUTE_LIMIT"]),
        priority=request.priority if request else "normal",
        device_paths=card.device_paths,
        slice_dir=os.path.join(slices_dir, slice_id),
        created=now,
        request=request.to_json() if request else {},
        runtime=runtime,
        backend=card.backend,
        pod=pod_of(spec.get("annotations") or {}),
    )


def reservations_from_containers(
    containers: Iterable[dict], read_spec, cards: Sequence[Card], slices_dir: str, binary: str, now: float
) -> tuple[list[Reservation], list[str]]:
    """(reservations, problems) for the given live containers; `read_spec(bundle)` loads config.json."""
    found: list[Reservation] = []
    problems: list[str] = []
    for c in containers:
        try:
            spec = read_spec(c["bundle"])
            r = reservation_from_spec(c["id"], spec, cards, slices_dir, {"binary": binary, "root": c["root"]}, now)
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{c['id']}: {exc}")
            continue
        if r is not None:
            found.append(r)
    return found, problems
