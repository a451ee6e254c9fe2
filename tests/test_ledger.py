"""The ledger as pure data, and its file on disk."""


import random

import pytest
from hypothesis import given, settings, strategies as st

from flexai_hook.daemon import ledger as L
from flexai_hook.devices.inventory import Card
from flexai_hook.request import Request

GIB = 1 << 30
CARDS = [
    Card(index=0, uuid="GPU-a", name="sim", memory=16 * GIB, device_paths=("/dev/s0",), backend="simulated"),
    Card(index=1, uuid="GPU-b", name="sim", memory=16 * GIB, device_paths=("/dev/s1",), backend="simulated"),
]


def reserve(ledger, cid, request, cards=CARDS):
    return L.reserve(ledger, cards, cid, request, policy="best-fit", slice_root="/s", now=1.0,
                     new_id=lambda: f"{abs(hash(cid)) % (1 << 48):012x}")


def test_reserve_is_idempotent_per_container():
    led, first = reserve(L.Ledger(), "c1", Request(fraction=30))
    led2, again = reserve(led, "c1", Request(fraction=90))
    assert again == first and led2 is led
    assert first.memory_bytes == 16 * GIB * 30 // 100 and first.compute == 30


def test_same_id_under_another_runtime_root_is_refused_not_shared():
    ns1 = {"binary": "/usr/sbin/runc", "root": "/run/containerd/runc/ns1"}
    ns2 = {"binary": "/usr/sbin/runc", "root": "/run/containerd/runc/ns2"}
    led, first = L.reserve(L.Ledger(), CARDS, "web", Request(fraction=30), policy="best-fit",
                           slice_root="/s", now=1.0, runtime=ns1)
    _, again = L.reserve(led, CARDS, "web", Request(fraction=30), policy="best-fit",
                         slice_root="/s", now=2.0, runtime=ns1)
    assert again == first
    with pytest.raises(L.PlacementError, match="already holds slice .* under runtime root /run/containerd/runc/ns1"):
        L.reserve(led, CARDS, "web", Request(fraction=30), policy="best-fit", slice_root="/s", now=2.0, runtime=ns2)


def test_release_is_idempotent():
    led, _ = reserve(L.Ledger(), "c1", Request(fraction=30))
    led, gone = L.release(led, "c1")
    assert gone.container_id == "c1" and led.reservations == {}
    led2, gone2 = L.release(led, "c1")
    assert gone2 is None and led2 is led


def test_pin_by_index_and_uuid_and_unknown_pin():
    _, r = reserve(L.Ledger(), "c1", Request(fraction=10, device="1"))
    assert r.card_index == 1
    _, r = reserve(L.Ledger(), "c1", Request(fraction=10, device="GPU-b"))
    assert r.card_index == 1
    with pytest.raises(L.PlacementError, match="no card '7'"):
        reserve(L.Ledger(), "c1", Request(fraction=10, device="7"))


def test_full_card_message_names_every_card():
    led = L.Ledger()
    for i in range(2):
        led, _ = reserve(led, f"w{i}", Request(fraction=100))
    with pytest.raises(L.PlacementError) as info:
        reserve(led, "late", Request(fraction=1))
    assert "card 0" in str(info.value) and "card 1" in str(info.value) and "\n" not in str(info.value)


def test_request_larger_than_any_card():
    with pytest.raises(L.PlacementError):
        reserve(L.Ledger(), "big", Request(memory_bytes=17 * GIB))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(1, 100), st.integers(1, 100)), max_size=40))
def test_never_overcommitted(ops):
    led = L.Ledger()
    for is_reserve, who, frac, compute in ops:
        cid = f"c{who}"
        if is_reserve:
            try:
                led, _ = reserve(led, cid, Request(fraction=frac, compute=compute))
            except L.PlacementError:
                pass
        else:
            led, _ = L.release(led, cid)
        for card in CARDS:
            memory, comp = led.used(card.index)
            assert memory <= card.memory and comp <= 100


def test_file_round_trip(tmp_path):
    f = L.LedgerFile(tmp_path / "ledger.json")
    assert f.load().reservations == {}
    led, r = reserve(L.Ledger(), "c1", Request(memory_bytes=GIB, priority="high"))
    f.save(led)
    assert f.load().reservations == {"c1": r}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 1}', b'{"version": 99, "reservations": []}',
                                     b'{"version": 1, "reservations": [{"slice_id": 3}]}', b"\x00\xff"])
def test_corrupt_file_is_refused_with_the_path(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with pytest.raises(L.LedgerCorrupt) as info:
        L.LedgerFile(path).load()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_low_priority_slices_time_share_compute_but_never_memory():
    # One card: a normal 70 % slice leaves 30 % of compute to guarantee. Low slices are
    # best-effort (they yield while higher ones have work), so two 50 % lows still fit...
    led, normal = reserve(L.Ledger(), "n", Request(memory_bytes=2 * GIB, compute=70), cards=CARDS[:1])
    led, low1 = reserve(led, "l1", Request(memory_bytes=2 * GIB, compute=50, priority="low"), cards=CARDS[:1])
    led, low2 = reserve(led, "l2", Request(memory_bytes=2 * GIB, compute=50, priority="low"), cards=CARDS[:1])
    assert {normal.card_index, low1.card_index, low2.card_index} == {0}
    assert led.used(0) == (6 * GIB, 70)
    # ...but a guaranteed 40 % does not (70 + 40 > 100), low slices or not,
    with pytest.raises(L.PlacementError):
        reserve(led, "n2", Request(memory_bytes=GIB, compute=40), cards=CARDS[:1])
    # and memory is never oversubscribed, whatever the priority.
    with pytest.raises(L.PlacementError):
        reserve(led, "l3", Request(memory_bytes=11 * GIB, compute=10, priority="low"), cards=CARDS[:1])


def _random_history(seed: int, steps: int = 60):
    """Ledgers after each of `steps` random reserves, releases and share changes."""
    from flexai_hook.record import replace as record_replace

    rng = random.Random(seed)
    led, out = L.Ledger(), []
    for step in range(steps):
        cid = f"c{rng.randrange(12)}"
        roll = rng.random()
        if cid in led.reservations and roll < 0.4:
            led, _ = L.release(led, cid)
        elif cid in led.reservations and roll < 0.6:
            changed = record_replace(led.reservations[cid], compute=rng.randrange(1, 5))
            led = L.Ledger({**led.reservations, cid: changed})
        else:
            try:
                led, _ = reserve(led, cid, Request(memory_bytes=GIB, compute=rng.randrange(1, 10)))
            except L.PlacementError:
                pass
        out.append(led)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_journal_batches_replay_to_the_ledger(tmp_path, seed):
    f = L.LedgerFile(tmp_path / "ledger.json")
    f.save(L.Ledger())
    saved = L.Ledger()
    for led in _random_history(seed):
        _, lines = f.delta(saved, led)
        L.append_journal(str(f.journal), ("\n".join(line for _, line in lines) + "\n").encode())
        saved = led
        assert L.LedgerFile(f.path).load() == led
    journal = f.journal.read_bytes()
    # a checkpoint written but the journal not yet emptied (a crash between the two): same ledger
    f.save(saved)
    f.journal.write_bytes(journal)
    assert L.LedgerFile(f.path).load() == saved


def test_a_batch_cut_short_is_ignored_and_a_damaged_line_before_an_end_is_corruption(tmp_path):
    f = L.LedgerFile(tmp_path / "ledger.json")
    f.save(L.Ledger())
    led, r = reserve(L.Ledger(), "c1", Request(memory_bytes=GIB))
    _, lines = f.delta(L.Ledger(), led)
    whole = "\n".join(line for _, line in lines) + "\n"
    f.journal.write_text(whole)
    assert L.LedgerFile(f.path).load().reservations == {"c1": r}
    led2, _ = reserve(led, "c2", Request(memory_bytes=GIB))
    _, more = f.delta(led, led2)
    unfinished = "\n".join(line for _, line in more[:-1]) + "\n"  # no end line: never answered
    for tail in (unfinished, unfinished + more[-1][1][:7], '{"b":9,"put":{"contai'):
        f.journal.write_text(whole + tail)
        assert L.LedgerFile(f.path).load().reservations == {"c1": r}
    f.journal.write_text(whole.replace('"put"', '"pu', 1) + unfinished + more[-1][1] + "\n")
    with pytest.raises(L.LedgerCorrupt) as info:
        L.LedgerFile(f.path).load()
    assert "ledger.journal" in str(info.value) and "flexai recover" in str(info.value)


def test_a_failed_append_is_cut_back(tmp_path, monkeypatch):
    import os as os_mod

    path = tmp_path / "ledger.journal"
    path.write_text('{"b":1,"end":true}\n')
    real_fdatasync = os_mod.fdatasync

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os_mod, "fdatasync", fail)
    with pytest.raises(OSError, match="No space"):
        L.append_journal(str(path), b'{"b":2,"put":{}}\n{"b":2,"end":true}\n')
    monkeypatch.setattr(os_mod, "fdatasync", real_fdatasync)
    assert path.read_text() == '{"b":1,"end":true}\n'


def test_card_problem_memory_is_strict_and_best_effort_compute_is_not_counted():
    led = L.Ledger()
    for i in range(3):
        led, _ = reserve(led, f"low{i}", Request(fraction=30, compute=60, priority="low"))
    assert L.card_problem(led, CARDS) is None  # 3 x 60 % time-shared is allowed
    from flexai_hook.record import replace

    r = led.reservations["low0"]
    fat = L.Ledger({**led.reservations, "low0": replace(r, memory_bytes=40 * GIB)})
    assert "but has 16.00 GiB" in L.card_problem(fat, CARDS)
    hard = L.Ledger({"h": replace(r, container_id="h", priority="normal", compute=101)})
    assert "more than 100%" in L.card_problem(hard, CARDS)
    for moved in (replace(r, card_index=5), replace(r, card_uuid="GPU-zzz")):
        assert "does not have" in L.card_problem(L.Ledger({"low0": moved}), CARDS)
    assert "does not have" in L.card_problem(led, CARDS[1:] if r.card_index == 0 else CARDS[:1])


def test_load_with_cards_refuses_an_overcommitted_ledger(tmp_path):
    from flexai_hook.record import replace

    led, r = reserve(L.Ledger(), "c1", Request(fraction=50))
    f = L.LedgerFile(tmp_path / "ledger.json")
    f.save(L.Ledger({"c1": replace(r, memory_bytes=40 * GIB)}))
    assert f.load().reservations["c1"].memory_bytes == 40 * GIB  # without cards: only parsing
    with pytest.raises(L.LedgerCorrupt) as info:
        L.LedgerFile(tmp_path / "ledger.json").load(CARDS)
    assert str(f.path) in str(info.value) and "flexai recover" in str(info.value)


def test_a_ledger_nested_too_deep_is_corrupt_not_a_crash(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(L.LedgerCorrupt):
        L.LedgerFile(path).load(CARDS)


def _card_states_afresh(ledger, cards, request):
    """card_states as it was before its memo: every CardState built anew."""
    from flexai_hook import placement

    relative = request.memory_bytes is None
    states = []
    for card in cards:
        mem_used, compute_used = ledger.used(card.index)
        total, free = card.memory, card.memory - mem_used
        if relative and card.memory:
            total, free = 1000, max(0, free) * 1000 // card.memory
        states.append(placement.CardState(index=card.index, uuid=card.uuid, model=card.name, memory_total=total,
                                          memory_free=max(0, free), compute_free=max(0, (100 - compute_used) * 10),
                                          whole_free=not ledger.holders(card.index)))
    return states


def test_card_states_memo_gives_the_states_built_afresh(monkeypatch):
    """card_states reuses CardStates it made before, and reserve/release carry the per-card
    totals over (flexaid's hot path): over random reserve and release sequences, on cards of different sizes, with absolute and relative requests, best-effort
    slices and a memo that fills up and starts again, it answers what building them anew would."""
    monkeypatch.setattr(L, "_STATES_LIMIT", 50)
    cards = CARDS + [Card(index=2, uuid="GPU-c", name="big", memory=80 * GIB, device_paths=("/dev/s2",),
                          backend="simulated"), Card(index=3, uuid="GPU-d", name="none", memory=0, device_paths=(), backend="simulated")]
    rng = random.Random(7)
    requests = [Request(fraction=10), Request(fraction=1, priority="low"), Request(memory_bytes=3 * GIB),
                Request(memory_fraction=20, compute=5), Request(compute=40), Request(fraction=5, device="2")]
    led, held = L.Ledger(), []
    for step in range(600):
        if held and rng.random() < 0.45:
            led, _ = L.release(led, held.pop(rng.randrange(len(held))))
        else:
            try:
                led, r = reserve(led, f"c{step}", rng.choice(requests), cards)
                held.append(r.container_id)
            except L.PlacementError:
                pass
        for request in requests:
            assert L.card_states(led, cards, request) == _card_states_afresh(led, cards, request)
        # the per-card totals reserve and release carry over are those summed afresh
        assert led._per_card == L.Ledger(dict(led.reservations))._per_card
