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
