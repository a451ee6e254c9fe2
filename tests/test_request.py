"""The request model: env and annotations -> one typed Request, and clean one-line rejections."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
from hypothesis import given, settings, strategies as st

from flexai_hook import request as rq
from flexai_hook.request import Request, RequestError, from_container, parse_fields
from flexai_hook import validation

GIB = 1 << 30


@pytest.mark.parametrize(
    "env, expected",
    [
        (["FLEXAI_FRACTION=0.3"], Request(fraction=30)),
        (["FLEXAI_FRACTION=1"], Request(fraction=100)),
        (["FLEXAI_FRACTION=.05"], Request(fraction=5)),
        (["FLEXAI_FRACTION=1.00"], Request(fraction=100)),
        (["FLEXAI_FRACTION= 0.25 "], Request(fraction=25)),
        (["FLEXAI_MEMORY=8GiB"], Request(memory_bytes=8 * GIB)),
        (["FLEXAI_MEMORY=8G"], Request(memory_bytes=8 * GIB)),
        (["FLEXAI_MEMORY=512m"], Request(memory_bytes=512 << 20)),
        (["FLEXAI_MEMORY=1.5GiB"], Request(memory_bytes=3 * GIB // 2)),
        (["FLEXAI_MEMORY=100KiB"], Request(memory_bytes=100 << 10)),
        (["FLEXAI_MEMORY=4096B"], Request(memory_bytes=4096)),
        (["FLEXAI_MEMORY=2 TiB"], Request(memory_bytes=2 << 40)),
        (["FLEXAI_MEMORY=0.5"], Request(memory_fraction=50)),
        (["FLEXAI_COMPUTE=30"], Request(compute=30)),
        (["FLEXAI_COMPUTE=100%"], Request(compute=100)),
        (["FLEXAI_DEVICE=1", "FLEXAI_FRACTION=0.5"], Request(fraction=50, device="1")),
        (["FLEXAI_DEVICE=GPU-8f6e2b1c-1234-5678-9abc-def012345678"],
         Request(device="GPU-8f6e2b1c-1234-5678-9abc-def012345678")),
        (["FLEXAI_PRIORITY=high", "FLEXAI_FRACTION=0.1"], Request(fraction=10, priority="high")),
        (["FLEXAI_FRACTION=0.3", "FLEXAI_MEMORY=2GiB", "FLEXAI_COMPUTE=50"],
         Request(fraction=30, memory_bytes=2 * GIB, compute=50)),
        # getenv() sees the first of duplicates, so the request does too
        (["FLEXAI_FRACTION=0.2", "FLEXAI_FRACTION=0.9"], Request(fraction=20)),
        # variables the runtime writes for the library are not requests
        (["FLEXAI_SLICE_ID=abc", "PATH=/bin"], None),
        ([], None),
    ],
)
def test_env_requests(env, expected):
    assert from_container(env, {}) == expected


def test_annotations_win_over_env():
    req = from_container(["FLEXAI_FRACTION=0.9", "FLEXAI_PRIORITY=low"],
                         {"flexai.io/fraction": "0.2", "other/x": "y"})
    assert req == Request(fraction=20, priority="low")


def test_a_valid_annotation_overrides_an_invalid_env_value():
    assert from_container(["FLEXAI_FRACTION=abc"], {"flexai.io/fraction": "0.4"}) == Request(fraction=40)


@pytest.mark.parametrize(
    "env, annotations, source",
    [
        (["FLEXAI_FRACTION=abc"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=1.5"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=0"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=0.00"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=0.333"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=-0"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=0.3.1"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=NaN"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=1e309"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION="], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_FRACTION=٠.٣"], {}, "FLEXAI_FRACTION"),  # Arabic-Indic digits
        (["FLEXAI_FRACTION=0.3\n"], {}, "FLEXAI_FRACTION"),
        (["FLEXAI_MEMORY=8"], {}, "FLEXAI_MEMORY"),  # a size needs a unit
        (["FLEXAI_MEMORY=8XB"], {}, "FLEXAI_MEMORY"),
        (["FLEXAI_MEMORY=0GiB"], {}, "FLEXAI_MEMORY"),
        (["FLEXAI_MEMORY=-1G"], {}, "FLEXAI_MEMORY"),
        (["FLEXAI_MEMORY=99999999999TiB"], {}, "FLEXAI_MEMORY"),
        (["FLEXAI_COMPUTE=0"], {}, "FLEXAI_COMPUTE"),
        (["FLEXAI_COMPUTE=101"], {}, "FLEXAI_COMPUTE"),
        (["FLEXAI_COMPUTE=30.5"], {}, "FLEXAI_COMPUTE"),
        (["FLEXAI_PRIORITY=urgent"], {}, "FLEXAI_PRIORITY"),
        (["FLEXAI_DEVICE=../../etc"], {}, "FLEXAI_DEVICE"),
        ([], {"flexai.io/fraction": "lots"}, "annotation flexai.io/fraction"),
        ([], {"flexai.io/fractoin": "0.3"}, "annotation flexai.io/fractoin"),
    ],
)
def test_rejections_name_field_value_and_what_is_allowed(env, annotations, source):
    with pytest.raises(RequestError) as info:
        from_container(env, annotations)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid {source}=")
    assert "expected " in message
    assert info.value.source == source


def test_a_huge_value_is_cut_short_in_the_message():
    with pytest.raises(RequestError) as info:
        from_container(["FLEXAI_FRACTION=" + "9" * 10_000], {})
    assert len(str(info.value)) < 300
    assert "10000 characters" in str(info.value)


def test_resolve_on_a_card():
    card = 16 * GIB
    assert Request(fraction=25).resolve(card) == (4 * GIB, 25)
    assert Request(memory_bytes=4 * GIB).resolve(card) == (4 * GIB, 25)
    assert Request(memory_bytes=1).resolve(card) == (1, 1)
    assert Request(compute=30).resolve(card) == (card * 30 // 100, 30)
    assert Request(fraction=30, memory_fraction=50).resolve(card) == (card // 2, 30)
    assert Request().resolve(card) == (card, 100)


# --- properties ---------------------------------------------------------------------------

shares = st.integers(min_value=1, max_value=100)
requests = st.builds(
    Request,
    fraction=st.none() | shares,
    memory_bytes=st.none() | st.integers(min_value=1, max_value=(1 << 63) - 1),
    compute=st.none() | shares,
    device=st.none() | st.integers(0, 999).map(str),
    priority=st.sampled_from(rq.PRIORITIES),
) | st.builds(Request, memory_fraction=shares, priority=st.sampled_from(rq.PRIORITIES))


@given(requests)
def test_every_valid_request_round_trips_through_its_raw_fields(req):
    fields = req.to_fields()
    env = [f"{rq.RULES[name].env}={value}" for name, value in fields.items()]
    annotations = {rq.RULES[name].annotation: value for name, value in fields.items()}
    if fields:
        assert from_container(env, {}) == req
        assert from_container([], annotations) == req
    assert Request.from_json(json.loads(json.dumps(req.to_json()))) == req


@given(requests)
def test_the_wire_form_matches_the_protocol_schema(req):
    assert validation.problem("protocol.schema.json", req.to_json(), "request") is None


junk = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["NaN", "nan", "inf", "-inf", "1e309", "-0", "0.3.1", "", " ", "0x1", "1_0",
                     "²", "０.３", "0.3\x00", "1/3", "+0.3", "3e-1", "0,3", "30%", "None"]),
    st.sampled_from(["9", "0.", "1GiB", "é", "high"]).map(lambda s: (s * 10_000)[:10_000]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=400)
@given(st.sampled_from(sorted(rq.RULES)), junk)
def test_junk_is_accepted_only_if_the_schema_accepts_it(name, value):
    """The fast validator and the JSON Schema agree, and junk never raises anything else."""
    schema = validation.load_schema("request.schema.json")
    try:
        req = parse_fields({name: value})
    except RequestError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    stripped = value.strip(" \t")
    jsonschema.validate({name: stripped}, schema)
    assert stripped.isascii()
    if name == "fraction":
        assert 1 <= req.fraction <= 100
        assert not math.isnan(float(stripped))


@given(st.sampled_from(sorted(rq.RULES)), st.text(max_size=30))
def test_schema_and_fast_validator_agree_on_arbitrary_text(name, value):
    schema = validation.load_schema("request.schema.json")
    try:
        parse_fields({name: value})
        fast_ok = True
    except RequestError:
        fast_ok = False
    stripped = value.strip(" \t")
    schema_ok = validation.validator("request.schema.json").is_valid({name: stripped}) and (
        stripped == "" or "\n" not in stripped
    )
    if fast_ok:
        assert schema_ok
    elif schema_ok:
        # Only semantic limits beyond the pattern may reject a schema-valid value.
        assert name == "memory"


# --- FLEXAI_* names flexai does not know (issue 17 item 7) ------------------------------------

def test_a_misspelled_env_name_is_warned_about_with_the_name_it_most_likely_means():
    env = ["FLEXAI_FRACTON=0.3", "PATH=/bin", "FLEXAI_FRACTON=0.5"]
    assert from_container(env, {}) is None  # not an error: the container runs, unsliced
    (line,) = rq.env_warnings(env)  # once, however often it is repeated
    assert line.startswith("FLEXAI_FRACTON ") and line.endswith("did you mean FLEXAI_FRACTION?")
    assert "\n" not in line


def test_a_name_close_to_nothing_lists_the_request_variables():
    (line,) = rq.env_warnings(["FLEXAI_GPUS=2"])
    assert "did you mean" not in line and "FLEXAI_FRACTION, FLEXAI_MEMORY" in line


@pytest.mark.parametrize("env", [
    ["FLEXAI_FRACTION=0.3", "FLEXAI_MEMORY=2GiB", "FLEXAI_COMPUTE_MODE=hard"],
    # what flexai-runtime itself writes into a sliced container, e.g. kept by `docker commit`
    ["FLEXAI_SLICE_ID=abc", "FLEXAI_REGION=/run/flexai/region", "FLEXAI_MEMORY_LIMIT=1", "FLEXAI_COMPUTE_BY=mps"],
    ["FLEXAI_CONTEXT_MEMORY=300MiB", "FLEXAI_SIM_DEBUG=1"],
    ["NOT_FLEXAI_FRACTON=1", "flexai_fracton=1"],
])
def test_names_flexai_sets_or_reads_are_not_warned_about(env):
    assert rq.env_warnings(env) == []


def test_garbage_names_are_shown_escaped_and_many_are_counted_not_listed():
    lines = rq.env_warnings([f"FLEXAI_X{i}=1" for i in range(12)] + ["FLEXAI_\x1b[2J=1"])
    assert len(lines) == 6 and lines[-1].startswith("8 more FLEXAI_* names")
    long = rq.env_warnings(["FLEXAI_" + "Y" * 5000 + "=1"])[0]
    assert len(long) < 400 and "5007 characters" in long


def test_own_env_names_list_every_name_flexai_writes_or_reads():
    """The list that keeps warnings quiet must follow the code: every FLEXAI_* name the runtime
    writes into a container (spec.py, mps.py) and every one libflexai, the simulated drivers or
    the host commands read."""
    import re
    from pathlib import Path

    repo = Path(rq.__file__).resolve().parent.parent
    found: set[str] = set()
    for path in (repo / "libflexai").rglob("*.c"):
        found |= set(re.findall(r'getenv\("(FLEXAI_[A-Z0-9_]+)"\)', path.read_text()))
    for path in (repo / "flexai_hook").rglob("*.py"):
        found |= set(re.findall(r'environ(?:\.get)?[\[(]"(FLEXAI_[A-Z0-9_]+)"', path.read_text()))
    for name in ("spec.py", "mps.py"):  # their ("NAME", value) pairs are the container's env
        found |= set(re.findall(r'\(\s*"(FLEXAI_[A-Z0-9_]+)",', (repo / "flexai_hook" / "oci" / name).read_text()))
    assert {"FLEXAI_SLICE_ID", "FLEXAI_COMPUTE_BY", "FLEXAI_CONTEXT_MEMORY", "FLEXAI_SOCKET"} <= found
    assert found - rq.KNOWN_ENV_NAMES == set()


def test_an_unknown_annotation_stays_an_error_and_names_the_key_it_most_likely_means():
    with pytest.raises(RequestError) as info:
        from_container([], {"flexai.io/fractoin": "0.3"})
    assert "flexai.io/fractoin" in str(info.value) and str(info.value).endswith("did you mean flexai.io/fraction?")
    with pytest.raises(RequestError) as info:
        from_container([], {"flexai.io/gpus": "2"})
    assert "did you mean" not in str(info.value) and "flexai.io/fraction" in str(info.value)
