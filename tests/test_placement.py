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
    rank_nodes,
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
    assert POLICIES == ("best-fit", "fgd", "flexai", "dra-first-fit", "dra-most-used-first")
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


# --- the stock Kubernetes DRA allocator's rule (docs/placement.md, "With Kubernetes DRA") -------


def test_dra_first_fit_takes_the_first_card_in_slice_order_that_fits():
    # the slice lists cards by index: 0 is too full for 400, 1 is the first that fits
    # (best-fit would take 2, whose 500 is the tightest fit)
    cards = [card(0, 300), card(1), card(2, 500)]
    assert choose(cards, share(400), "dra-first-fit") == (1,)
    assert choose(cards, share(250), "dra-first-fit") == (0,)
    assert choose(list(reversed(cards)), share(400), "dra-first-fit") == (1,)
    assert choose(cards, share(400), "best-fit") == (2,)
    # both capacities are checked, as CmpRequestOverCapacity does for each one
    assert choose([card(0, 900, compute=100), card(1)], Demand(memory=300, compute=300), "dra-first-fit") == (1,)


def test_dra_most_used_first_is_first_fit_on_a_slice_listed_fullest_first():
    # listed by free share: 2 (500 left), 3 (600), 0 and 1 empty; 0 has 300 and cannot hold 400
    cards = [card(0, 300), card(1), card(2, 500), card(3, 600)]
    assert choose(cards, share(400), "dra-most-used-first") == (2,)
    assert choose(cards, share(550), "dra-most-used-first") == (3,)
    assert choose(cards, share(250), "dra-most-used-first") == (0,)


def test_dra_first_fit_strands_what_flexai_keeps_usable():
    # One half-used card and one empty card; typical requests are halves and whole cards.
    # First fit puts the next half on the empty card 0, leaving two half cards: the whole-card
    # request that follows fits nowhere. flexai fills card 1 and keeps card 0 whole.
    typical = Workload.from_demands([share(500), share(1000)])
    cards = [card(0), card(1, 500)]

    def place(policy: str) -> list[CardState]:
        chosen = choose(cards, share(500), policy, typical)
        assert chosen is not None
        return [card(c.index, c.memory_free - 500) if c.index == chosen[0] else c for c in cards]

    assert choose(place("dra-first-fit"), share(1000), "dra-first-fit", typical) is None
    assert choose(place("flexai"), share(1000), "flexai", typical) == (0,)


def test_dra_node_choice_is_the_schedulers_least_allocated_not_the_cards():
    # kube-scheduler does not score DRA capacity: it takes the node with the most CPU left
    # as a share of its allocatable CPU (LeastAllocated), here "b" (60 of 64 cores free,
    # 56 after the pod) over "a" (28 of 64 after), although "a" has the card that keeps
    # "b"'s two cards whole. flexai packs "a".
    a = Node("a", 32000, (card(0), card(1, 400)), cpu_milli_total=64000)
    b = Node("b", 60000, (card(0), card(1)), cpu_milli_total=64000)
    for policy in ("dra-first-fit", "dra-most-used-first"):
        assert choose_node([a, b], share(300), 4000, policy) == ("b", (0,))
    assert choose_node([a, b], share(300), 4000, "flexai") == ("a", (1,))
    # the score is an integer percentage: 56.25 % and 56.56 % left tie, and ties go to the name
    c = Node("c", 40000, (card(0),), cpu_milli_total=64000)
    d = Node("d", 40200, (card(0),), cpu_milli_total=64000)
    assert choose_node([d, c], share(300), 4000, "dra-first-fit") == ("c", (0,))
    # the slice order still decides the card on the chosen node
    e = Node("e", 60000, (card(0, 200), card(1), card(2, 500)), cpu_milli_total=64000)
    assert choose_node([a, e], share(300), 4000, "dra-first-fit") == ("e", (1,))
    assert choose_node([a, e], share(300), 4000, "dra-most-used-first") == ("e", (2,))


def test_dra_node_choice_without_a_cpu_total_compares_free_cpu():
    nodes = [node("a", 8000, 1000), node("b", 12000, 1000)]
    assert choose_node(nodes, share(300), 1000, "dra-first-fit") == ("b", (0,))


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


@pytest.mark.parametrize("policy", POLICIES)
def test_rank_nodes_starts_with_choose_nodes_answer_and_leaves_out_what_does_not_fit(policy):
    nodes = [node("c", 8000, 1000, 200), node("a", 8000, 1000, 1000), node("b", 500, 1000), node("d", 8000, 300)]
    ranked = rank_nodes(nodes, share(500), 1000, policy)
    assert ranked[0] == choose_node(nodes, share(500), 1000, policy)
    assert sorted(name for name, _ in ranked) == ["a", "c"]  # b: too little CPU; d: no card fits
    assert rank_nodes(nodes, share(500), 10**6, policy) == []


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


# --- the openb replay (bench/placement.py) on hand-made traces -----------------------------------


def _bench():
    """bench/placement.py as a module (it is a script, not part of the package)."""
    import importlib.util
    import sys
    from pathlib import Path

    if "bench_placement" in sys.modules:
        return sys.modules["bench_placement"]
    path = Path(__file__).resolve().parent.parent / "bench" / "placement.py"
    spec = importlib.util.spec_from_file_location("bench_placement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_placement"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _trace(tmp_path, pods: list[str], header: str):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,32000,65536,2,V100M16\nn1,32000,65536,2,V100M16\n")
    pod_list = tmp_path / "pods.csv"
    pod_list.write_text(header + "\n" + "\n".join(pods) + "\n")
    return nodes, pod_list


def test_bench_skips_departures_on_a_trace_without_times(tmp_path, capsys):
    bench = _bench()
    nodes, pods = _trace(tmp_path, [f"p{i},1000,1024,1,500," for i in range(6)],
                         "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec")
    assert bench.main(["--nodes", str(nodes), "--pods", str(pods), "--seeds", "1",
                       "--policies", "best-fit,dra-first-fit",
                       "--sections", "arrivals,departures,whole"]) == 0
    out = capsys.readouterr().out
    assert "note: departures skipped" in out
    assert "GPU allocation, arrivals only" in out and "Whole cards" in out


def test_bench_whole_cards_hold_a_card_per_fractional_pod(tmp_path):
    bench = _bench()
    nodes_csv, pods_csv = _trace(tmp_path, [f"p{i},1000,1024,1,500,,LS,Running,0,10" for i in range(8)],
                                 "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
                                 "creation_time,deletion_time")
    nodes, pods = bench.load_nodes(nodes_csv), bench.load_pods(pods_csv)
    decide = bench.decider("flexai", bench.workload_of(pods), 1)
    # 8 half-card pods on 4 cards: fractions place all 8, whole cards only 4
    fractions = bench.replay_arrivals(nodes, pods, decide)
    whole = bench.replay_arrivals(nodes, pods, decide, whole_cards=True)
    assert (fractions["placed_130"], fractions["asked_130"], fractions["alloc_130"]) == (8, 100.0, 100.0)
    assert (whole["placed_130"], whole["asked_130"], whole["alloc_130"]) == (4, 50.0, 100.0)
    # at 100 % demand (4000 milli asked of 4000): the same, as all pods have arrived by then
    assert whole["placed_100"] == 4 and fractions["placed_100"] == 8
