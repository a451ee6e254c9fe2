"""Placement policies on small hand-made states whose best answers are known."""

from __future__ import annotations

import random

import pytest

from flexai_hook.placement import (
    DEFAULT_POLICY,
    POLICIES,
    CardState,
    Demand,
    Node,
    TaskType,
    Workload,
    choose,
    choose_node,
)

TOTAL = 1000  # card memory in this file's units: memory shares read as thousandths


def card(index: int, free: int = TOTAL, *, compute: int | None = None, model: str = "V100M16") -> CardState:
    """A card with `free` memory (and the same compute, unless given) left."""
    compute = free if compute is None else compute
    return CardState(
        index=index,
        uuid=f"GPU-{index:04d}",
        model=model,
        memory_total=TOTAL,
        memory_free=free,
        compute_free=compute,
        whole_free=free == TOTAL and compute == 1000,
    )


def share(milli: int, **kw) -> Demand:
    return Demand(memory=milli, compute=milli, **kw)


def only(milli: int) -> Workload:
    """A typical workload of one request size."""
    return Workload.from_demands([share(milli)])


# --- the interface ----------------------------------------------------------------------------


def test_policy_names():
    assert POLICIES == ("best-fit", "fgd", "flexai")
    assert DEFAULT_POLICY == "flexai"


@pytest.mark.parametrize("bad", ["random", "", "FGD", None])
def test_unknown_policy_names_the_allowed_ones(bad):
    with pytest.raises(ValueError, match="best-fit, fgd, flexai"):
        choose([card(0)], share(100), bad)
    with pytest.raises(ValueError, match="best-fit, fgd, flexai"):
        choose_node([Node("n", 1000, (card(0),))], share(100), 0, bad)


def test_demand_is_validated():
    with pytest.raises(ValueError):
        Demand(memory=1, compute=1001)
    with pytest.raises(ValueError):
        Demand(memory=-1, compute=10)
    with pytest.raises(ValueError):
        Demand(memory=1, compute=10, cards=-1)
    assert Demand(memory=1, compute=10, models="A10").models == ("A10",)


# --- best-fit ---------------------------------------------------------------------------------


def test_best_fit_takes_the_fullest_card_that_fits():
    cards = [card(0), card(1, 600), card(2, 300), card(3, 500)]
    assert choose(cards, share(250), "best-fit") == (2,)
    assert choose(cards, share(350), "best-fit") == (3,)


def test_ties_go_to_the_lowest_index_whatever_the_order():
    cards = [card(3, 500), card(1, 500), card(2, 800)]
    for policy in POLICIES:
        assert choose(cards, share(300), policy) == (1,)
        shuffled = cards[:]
        random.Random(1).shuffle(shuffled)
        assert choose(shuffled, share(300), policy) == (1,)


@pytest.mark.parametrize("policy", POLICIES)
def test_same_state_same_answer(policy):
    rng = random.Random(5)
    cards = [card(i, rng.randrange(0, 1001, 10)) for i in range(8)]
    demand = share(200)
    first = choose(cards, demand, policy)
    assert all(choose(list(cards), demand, policy) == first for _ in range(5))


# --- feasibility, for every policy --------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_card_too_full_is_skipped(policy):
    assert choose([card(0, 100), card(1, 700)], share(400), policy) == (1,)


@pytest.mark.parametrize("policy", POLICIES)
def test_nothing_fits_gives_none(policy):
    assert choose([card(0, 100), card(1, 300)], share(400), policy) is None
    assert choose([], share(100), policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_a_request_larger_than_any_card_gives_none(policy):
    assert choose([card(0), card(1)], Demand(memory=TOTAL + 1, compute=500), policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_memory_fitting_is_not_enough_when_compute_does_not(policy):
    cards = [card(0, 900, compute=100), card(1, 400, compute=900)]
    assert choose(cards, Demand(memory=300, compute=300), policy) == (1,)
    assert choose(cards[:1], Demand(memory=300, compute=300), policy) is None
    # and the other way round
    assert choose([card(0, 100, compute=900)], Demand(memory=300, compute=300), policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_pin_by_index_and_by_uuid(policy):
    cards = [card(0, 300), card(1), card(2, 500)]
    assert choose(cards, share(250, pin="1"), policy) == (1,)
    assert choose(cards, share(250, pin="GPU-0002"), policy) == (2,)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_full_or_unknown_pinned_card_gives_none(policy):
    cards = [card(0, 100), card(1)]
    assert choose(cards, share(250, pin="0"), policy) is None
    assert choose(cards, share(250, pin="GPU-0000"), policy) is None
    assert choose(cards, share(250, pin="7"), policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_model_constraints(policy):
    cards = [card(0, model="V100M16"), card(1, 600, model="V100M32"), card(2, 500, model="A10")]
    assert choose(cards, share(400, models=("V100M32",)), policy) == (1,)
    assert choose(cards, share(400, models=("A10", "V100M32")), policy) in {(1,), (2,)}
    assert choose(cards, share(400, models=("T4",)), policy) is None
    assert choose(cards, share(400, models=("V100M32",), pin="0"), policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_multi_card_requests_take_whole_empty_cards(policy):
    cards = [card(0), card(1, 990), card(2), card(3)]
    assert choose(cards, Demand(memory=0, compute=0, cards=2), policy) == (0, 2)
    assert choose(cards, Demand(memory=0, compute=0, cards=3), policy) == (0, 2, 3)
    assert choose(cards, Demand(memory=0, compute=0, cards=4), policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_multi_card_requests_honour_pins_and_models(policy):
    cards = [card(0), card(1, 990), card(2, model="A10"), card(3)]
    two = Demand(memory=0, compute=0, cards=2)
    assert choose(cards, Demand(memory=0, compute=0, cards=2, pin="3"), policy) == (0, 3)
    assert choose(cards, Demand(memory=0, compute=0, cards=2, pin="1"), policy) is None
    assert choose(cards, Demand(memory=0, compute=0, cards=2, models=("V100M16",)), policy) == (0, 3)
    assert choose(cards, Demand(memory=0, compute=0, cards=2, models=("A10",)), policy) is None
    assert choose(cards, two, policy) == (0, 2)


def test_a_whole_free_flag_is_what_multi_card_requests_trust():
    # memory and compute all free but a reservation of nothing still holds the card
    held = CardState(0, "GPU-0", "X", TOTAL, TOTAL, 1000, whole_free=False)
    assert choose([held, card(1)], Demand(memory=0, compute=0, cards=2), "best-fit") is None


# --- fgd and flexai -----------------------------------------------------------------------------


def test_fgd_keeps_cards_usable_by_the_typical_request_where_best_fit_does_not():
    # Typical requests take 0.6 card. Putting 0.3 on the 0.8 card leaves 0.5 nobody
    # typical can use; putting it on the empty card leaves 0.7, still usable.
    cards = [card(0, 800), card(1)]
    assert choose(cards, share(300), "best-fit") == (0,)
    assert choose(cards, share(300), "fgd", only(600)) == (1,)
    assert choose(cards, share(300), "flexai", only(600)) == (1,)


def test_fgd_fills_a_sliver_no_typical_request_could_use():
    cards = [card(0), card(1, 400), card(2, 700)]
    assert choose(cards, share(350), "fgd", only(600)) == (1,)


def test_flexai_breaks_fgd_ties_by_what_the_typical_mix_can_still_pack():
    # Typical requests take 0.3 card; both choices keep every card usable, so FGD ties and
    # takes the lowest index. On the 0.5 card, 0.2 uses up the sliver a run of 0.3s would
    # have left (0.5 -> 0.3: one fits either way); on the empty card it costs one of three
    # 0.3s (1.0 -> 0.8: two fit, 0.2 left over).
    cards = [card(0), card(1, 500)]
    assert choose(cards, share(200), "fgd", only(300)) == (0,)
    assert choose(cards, share(200), "flexai", only(300)) == (1,)


def test_fgd_with_no_history_uses_the_default_mix():
    cards = [card(0, 800), card(1)]
    assert len(Workload()) == 0
    assert choose(cards, share(300), "fgd") in {(0,), (1,)}
    assert choose(cards, share(300), "fgd", Workload()) == choose(cards, share(300), "fgd")


# --- whole clusters ------------------------------------------------------------------------------


def node(name: str, cpu: int, *frees: int, model: str = "V100M16") -> Node:
    return Node(name, cpu, tuple(card(i, f, model=model) for i, f in enumerate(frees)))


@pytest.mark.parametrize("policy", POLICIES)
def test_choose_node_ties_go_to_the_lowest_name(policy):
    nodes = [node("b", 8000, 1000, 1000), node("a", 8000, 1000, 1000), node("c", 8000, 1000, 1000)]
    assert choose_node(nodes, share(500), 1000, policy) == ("a", (0,))


@pytest.mark.parametrize("policy", POLICIES)
def test_choose_node_respects_cpu(policy):
    nodes = [node("a", 500, 1000), node("b", 4000, 1000)]
    assert choose_node(nodes, share(500), 1000, policy) == ("b", (0,))
    assert choose_node(nodes, share(500), 5000, policy) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_choose_node_places_cpu_only_requests(policy):
    nodes = [node("a", 500, 1000), node("b", 4000, 1000)]
    assert choose_node(nodes, Demand(memory=0, compute=0, cards=0), 1000, policy) == ("b", ())


@pytest.mark.parametrize("policy", POLICIES)
def test_choose_node_whole_cards_and_models(policy):
    nodes = [node("a", 64000, 1000, 300, 1000), node("b", 64000, 1000, 1000, model="A10")]
    assert choose_node(nodes, Demand(memory=0, compute=0, cards=2), 0, policy) in {
        ("a", (0, 2)),
        ("b", (0, 1)),
    }
    a10 = Demand(memory=0, compute=0, cards=2, models=("A10",))
    assert choose_node(nodes, a10, 0, policy) == ("b", (0, 1))
    assert choose_node(nodes, Demand(memory=0, compute=0, cards=3), 0, policy) is None


def test_best_fit_node_prefers_the_fullest_node():
    nodes = [node("a", 32000, 1000, 1000), node("b", 32000, 1000, 400)]
    assert choose_node(nodes, share(300), 1000, "best-fit") == ("b", (1,))


def test_flexai_keeps_cpu_for_the_cards_left_on_a_node_in_use():
    # Typical requests: half a card with 4 cores. On node "a" the 8-core request would leave
    # 4 cores for 1.4 cards (room for one typical request, not two); on "b" the cores to
    # spare keep both usable. FGD only checks that one more request still fits (it does on
    # both), so it ties and takes "a"; best-fit takes "a" as the fuller node.
    typical = Workload.from_demands([(share(500), 4000)])
    nodes = [node("a", 12000, 900, 1000), node("b", 40000, 900, 1000)]
    assert choose_node(nodes, share(500), 8000, "fgd", typical) == ("a", (1,))
    assert choose_node(nodes, share(500), 8000, "best-fit", typical) == ("a", (0,))
    assert choose_node(nodes, share(500), 8000, "flexai", typical) == ("b", (1,))


def test_choose_node_agrees_with_choose_on_one_node():
    cards = [card(0), card(1, 600), card(2, 300), card(3, 500)]
    for policy in POLICIES:
        for milli in (100, 250, 450, 800):
            found = choose_node([Node("n", 10**6, tuple(cards))], share(milli), 0, policy)
            assert found == ("n", choose(cards, share(milli), policy))


def test_node_memo_does_not_leak_between_states():
    before = node("a", 8000, 1000, 1000)
    after = Node("a", 8000, (card(0, 200), card(1)))
    assert choose_node([before], share(500), 1000, "flexai") == ("a", (0,))
    assert choose_node([after], share(500), 1000, "flexai") == ("a", (1,))
    assert choose_node([before], share(500), 1000, "flexai") == ("a", (0,))


# --- the workload ----------------------------------------------------------------------------------


def test_workload_keeps_the_frequent_types_and_a_bounded_window():
    w = Workload(window=4, coverage=1.0)
    for milli in (100, 200, 200, 300, 300, 300):
        w.observe(share(milli))
    assert len(w) == 4
    kinds = {t.compute: n for t, n in w.typical()}
    assert kinds == {200: 1, 300: 3}


def test_workload_coverage_drops_the_rare_tail():
    w = Workload.from_demands([share(500)] * 95 + [share(100)] * 5, coverage=0.9)
    assert [t.compute for t, _ in w.typical()] == [500]


def test_task_types_are_card_relative():
    assert TaskType.of(Demand(memory=8 << 30, compute=250), memory_total=32 << 30).memory_share == 250
    assert TaskType.of(Demand(memory=8 << 30, compute=250)).memory_share == 250  # follows compute
    assert TaskType.of(Demand(memory=0, compute=0, cards=4)).cards == 4


def test_workload_changes_are_picked_up():
    cards = [card(0, 800), card(1)]
    w = only(600)
    assert choose(cards, share(300), "fgd", w) == (1,)
    learned = Workload(refresh_every=1, window=10)
    for _ in range(10):
        learned.observe(share(500))
    assert choose(cards, share(300), "fgd", learned) == (0,)  # 0.5 left is still usable
    for _ in range(10):
        learned.observe(share(600))
    assert choose(cards, share(300), "fgd", learned) == (1,)


def test_a_refresh_that_finds_the_same_mix_keeps_the_compiled_workload_and_its_memos():
    """flexaid's steady request mix: the workload re-read every refresh_every requests is the
    same, so the compiled one (and what choose memoised on it) is kept; a changed mix is not."""
    w = Workload(refresh_every=5, window=10)
    for _ in range(10):
        w.observe(share(100))
    first = w.compiled()
    cards = [card(0, 800), card(1, 300), card(2)]
    picked = choose(cards, share(100), "flexai", w)
    for _ in range(12):  # a full window more of the same: two refreshes
        w.observe(share(100))
        assert w.compiled() is first
    assert choose(cards, share(100), "flexai", w) == picked
    for _ in range(5):
        w.observe(share(600))
    changed = w.compiled()
    assert changed is not first and changed.typical == w.typical()
    fresh = Workload.from_demands([share(100)] * 5 + [share(600)] * 5, window=10)
    for policy in ("fgd", "flexai"):
        for demand in (share(100), share(300), share(600)):
            assert choose(cards, demand, policy, w) == choose(cards, demand, policy, fresh)
