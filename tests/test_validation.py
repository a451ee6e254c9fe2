"""The daemon's fast validator (fastjsonschema) and the reference one (jsonschema) must agree
on every message: the fast one decides acceptance on the hot path."""

from __future__ import annotations

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flexai_hook import validation

OPS = ("reserve_message", "release_message", "status_message")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**6), st.floats(allow_nan=False),
                    st.sampled_from(["", "c1", "0.3", "abc", "GPU-1", "high", "/usr/sbin/runc", "x" * 300,
                                     "reserve", "release", "status", "1.5", "8GiB", "0"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["op", "container_id", "request", "runtime", "state", "fraction", "memory", "compute", "device",
         "priority", "binary", "root", "pid", "id", "bundle", "status", "x"]), inner, max_size=4)), max_leaves=12)

VALID = [
    {"op": "reserve", "container_id": "c1", "request": {"fraction": 30}},
    {"op": "reserve", "container_id": "c1", "request": {"memory_bytes": 1 << 30, "compute": 20, "priority": "high"},
     "runtime": {"binary": "/usr/sbin/runc", "root": "/run/runc"}},
    {"op": "reserve", "container_id": "c1", "request": {"fraction": 30}, "runtime": {"pid": 12, "pid_start": 5}},
    {"op": "release", "container_id": "c1"},
    {"op": "release", "state": {"ociVersion": "1.0.2", "id": "c1", "status": "stopped", "bundle": "/b"}},
    {"op": "status"},
]


def agree(definition: str, message: object) -> None:
    try:
        validation.fast_validator("protocol.schema.json", definition)(message)
        fast = True
    except fastjsonschema.JsonSchemaException:
        fast = False
    reference = not any(validation.validator("protocol.schema.json", definition).iter_errors(message))
    assert fast == reference, (definition, message)


@pytest.mark.parametrize("definition", OPS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=values)
def test_fast_and_reference_validators_agree_on_anything(definition, message):
    agree(definition, message)


@pytest.mark.parametrize("definition", OPS)
@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(VALID), key=st.sampled_from(["op", "container_id", "request", "runtime", "state", "extra"]),
       path=st.sampled_from([None, "fraction", "memory_bytes", "compute", "priority", "binary", "pid", "id"]),
       value=values)
def test_fast_and_reference_validators_agree_on_near_misses(definition, base, key, path, value):
    message = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    if path is not None and isinstance(message.get(key), dict):
        message[key][path] = value
    else:
        message[key] = value
    agree(definition, message)


def test_valid_messages_are_accepted_by_both():
    for message in VALID:
        definition = f"{message['op']}_message"
        agree(definition, message)
        assert validation.problem("protocol.schema.json", message, definition) is None, message


def test_a_rejection_still_names_the_problem():
    line = validation.problem("protocol.schema.json", {"op": "reserve", "container_id": "c1",
                                                       "request": {"fraction": 300}}, "reserve_message")
    assert line and "300" in line and "request" in line


# The hand-written checks flexaid runs first for its busiest messages (validation._HAND_WRITTEN):
# they may only say "valid", so what they accept must be valid to the reference (jsonschema), and
# they should accept what the compiled validator accepts (or the hot path pays for both).

HAND = {definition: validation._HAND_WRITTEN[("protocol.schema.json", definition)] for definition in OPS}

ids = st.one_of(st.sampled_from(["c1", "a.b:c+d=e@f-g_h", "-c1", ".c", "c 1", "c1\n", "", "x" * 1024, "x" * 1025,
                                 "é", "0"]), st.text(max_size=12))
integers = st.one_of(st.integers(-3, 103), st.sampled_from([True, False, 30.0, 30.5, 1 << 63, (1 << 63) - 1,
                                                              "30", None]))
requests = st.dictionaries(
    st.sampled_from(["fraction", "memory_bytes", "memory_fraction", "compute", "device", "priority",
                     "compute_mode", "memory", "x"]),
    st.one_of(integers, st.sampled_from(["high", "normal", "low", "hard", "work-conserving", "HIGH", "", "0",
                                         "GPU-1", "x" * 65])), max_size=4)
runtimes = st.dictionaries(st.sampled_from(["binary", "root", "pid", "pid_start", "x"]),
                           st.one_of(integers, st.sampled_from(["/usr/sbin/runc", "runc", "", "/" + "x" * 4096,
                                                                "/run/runc", "x" * 4097])), max_size=3)
states = st.dictionaries(st.sampled_from(["id", "status", "bundle", "ociVersion"]), st.one_of(ids, integers),
                         max_size=3)
messages = st.dictionaries(
    st.sampled_from(["op", "container_id", "request", "runtime", "state", "x"]),
    st.one_of(st.sampled_from(["reserve", "release", "status", "update"]), ids, requests, runtimes, states,
              integers, st.none(), st.lists(st.integers(), max_size=2)), max_size=5)


def fast_accepts(definition: str, message: object) -> bool:
    try:
        validation.fast_validator("protocol.schema.json", definition)(message)
        return True
    except fastjsonschema.JsonSchemaException:
        return False


def check_hand_written(definition: str, message: object) -> None:
    hand = HAND[definition](message)
    reference = not any(validation.validator("protocol.schema.json", definition).iter_errors(message))
    if hand:
        assert reference, (definition, message)  # never "valid" for what the schema rejects
    fast = fast_accepts(definition, message)
    assert hand == fast, (definition, message, hand, fast)
    assert (validation.problem("protocol.schema.json", message, definition) is None) == reference


@pytest.mark.parametrize("definition", OPS)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages)
def test_hand_written_checks_agree_with_the_schema_on_near_valid_messages(definition, message):
    check_hand_written(definition, message)


@pytest.mark.parametrize("definition", OPS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=values)
def test_hand_written_checks_agree_with_the_schema_on_anything(definition, message):
    check_hand_written(definition, message)


@pytest.mark.parametrize("definition", OPS)
@settings(max_examples=500, deadline=None)
@given(base=st.sampled_from(VALID), key=st.sampled_from(["op", "container_id", "request", "runtime", "state", "extra"]),
       path=st.sampled_from([None, "fraction", "memory_bytes", "memory_fraction", "compute", "device", "priority",
                             "compute_mode", "binary", "root", "pid", "pid_start", "id", "x"]),
       value=st.one_of(integers, ids, values))
def test_hand_written_checks_agree_on_near_misses_of_valid_messages(definition, base, key, path, value):
    message = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    if path is not None and isinstance(message.get(key), dict):
        message[key][path] = value
    else:
        message[key] = value
    check_hand_written(definition, message)


def test_hand_written_checks_accept_what_the_daemon_gets_most():
    for message in VALID + [
        {"op": "reserve", "container_id": "c1", "request": {"fraction": 1, "priority": "low", "compute_mode": "hard",
                                                            "device": "GPU-1", "memory_fraction": 5, "compute": 100}},
        {"op": "reserve", "container_id": "c1", "request": {}, "runtime": {}},
        {"op": "release", "state": {"id": "c1"}},
    ]:
        definition = f"{message['op']}_message"
        assert HAND[definition](message), message
        check_hand_written(definition, message)
    assert HAND["reserve_message"]({"op": "reserve", "container_id": "c1", "request": {"compute": 30.0}})  # an integer
    # what only the slower validators decide (the schema's `$` lets an id end in a newline)
    message = {"op": "release", "container_id": "c1\n"}
    assert not HAND["release_message"](message) and not fast_accepts("release_message", message)
    assert validation.problem("protocol.schema.json", message, "release_message") is None
