"""The daemon places with the configured policy and plans for the request mix it has seen."""

from __future__ import annotations

import random

import pytest

from flexai_hook.daemon import service as daemon
from flexai_hook.daemon import ledger
from flexai_hook import placement
from flexai_hook.devices.inventory import Card
from flexai_hook.request import Request

GIB = 1 << 30


def service(tmp_path, policy: str, cards: int = 2) -> daemon.Service:
    tmp_path.mkdir(exist_ok=True)
    config = daemon.Config(state_dir=str(tmp_path / "state"), slices_dir=str(tmp_path / "slices"), policy=policy)
    (tmp_path / "state").mkdir(exist_ok=True)
    return daemon.Service(config, [
        Card(index=i, uuid=f"GPU-{i}", name="sim", memory=16 * GIB, device_paths=(f"/dev/sim{i}",), backend="simulated")
        for i in range(cards)])


def reserve(svc, cid, fraction):
    reply = svc.handle_and_commit({"op": "reserve", "container_id": cid, "request": {"fraction": fraction}})
    assert reply["ok"], reply
    return reply["reservation"]


def test_workload_learns_new_requests_only_once_and_survives_restart(tmp_path):
    svc = service(tmp_path, "flexai")
    assert len(svc.workload) == 0
    reserve(svc, "a", 30)
    reserve(svc, "a", 30)  # idempotent: not a new request
    reserve(svc, "b", 50)
    assert len(svc.workload) == 2
    again = service(tmp_path, "flexai")  # a restart relearns from the ledger
    assert len(again.workload) == 2
    assert again.status()["policy"] == "flexai"


def test_learned_mix_steers_the_fragmentation_aware_choice(tmp_path):
    # Card 0 has 0.3 free, card 1 has 0.5; a 0.1 slice fits both. With the default mix
    # (0.1..1.0 alike) fgd fills the fuller card 0. A host that has only seen 0.3 requests
    # keeps card 0's 0.3 whole for the next one and puts the 0.1 on card 1.
    def place_small(svc):
        reserve_pinned(svc, "big0", 70, "0")
        reserve_pinned(svc, "big1", 50, "1")
        return reserve(svc, "small", 10)["card_index"]

    plain = service(tmp_path / "plain", "fgd")
    learned = service(tmp_path / "learned", "fgd")
    for _ in range(20):
        ledger.observe(learned.workload, Request(fraction=30), learned.cards)
    assert place_small(plain) == 0
    assert place_small(learned) == 1


def reserve_pinned(svc, cid, fraction, device):
    reply = svc.handle_and_commit(
        {"op": "reserve", "container_id": cid, "request": {"fraction": fraction, "device": device}})
    assert reply["ok"], reply


@pytest.mark.parametrize("policy", ["best-fit", "fgd", "flexai"])
def test_daemon_places_each_reservation_where_the_policy_function_says(tmp_path, policy):
    rng = random.Random(7)
    svc = service(tmp_path, policy, cards=4)
    held: list[str] = []
    placed = 0
    for step in range(150):
        if held and rng.random() < 0.35:
            cid = held.pop(rng.randrange(len(held)))
            assert svc.handle_and_commit({"op": "release", "container_id": cid})["ok"]
            continue
        fraction = rng.choice([5, 10, 10, 20, 25, 30, 50, 70, 100])
        request = Request(fraction=fraction)
        expected = placement.choose(ledger.card_states(svc.ledger, svc.cards, request),
                                    ledger.demand_of(request, svc.cards), policy, svc.workload)
        reply = svc.handle_and_commit({"op": "reserve", "container_id": f"c{step}", "request": {"fraction": fraction}})
        if expected is None:
            assert not reply["ok"] and "no card can fit" in reply["error"]
        else:
            assert reply["ok"], reply
            assert (reply["reservation"]["card_index"],) == expected
            held.append(f"c{step}")
            placed += 1
    assert placed > 50  # the sequence exercised real choices, full cards included
