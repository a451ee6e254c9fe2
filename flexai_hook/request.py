"""A container's flexai request: FLEXAI_* env and flexai.io/* annotations become one typed value.

This module is on the runtime's start path, so it imports only the standard library: the
patterns come from the shipped JSON Schema (schemas/request.schema.json) and are matched with
`re`, which keeps one source of truth without paying ~90 ms to import jsonschema per container.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping

from .kube import CONTAINERS_ANNOTATION, not_listed_reason, parse_containers, sandbox_reason
from .record import fields, record

ENV_PREFIX = "FLEXAI_"
ANNOTATION_PREFIX = "flexai.io/"
PRIORITIES = ("high", "normal", "low")
DEFAULT_PRIORITY = "normal"
COMPUTE_MODES = ("work-conserving", "hard")
DEFAULT_COMPUTE_MODE = "work-conserving"

# Suffix -> multiplier. Binary everywhere, as Docker's --memory does (there "1g" is 1 GiB too).
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MAX_BYTES = (1 << 63) - 1  # what an int64 in the region and the driver APIs can hold
_VALUE_PREVIEW = 40
_MAX_WARNINGS = 5  # unknown env names reported one by one; the rest are counted


@record
class FieldRule:
    name: str
    env: str
    annotation: str
    max_length: int
    pattern: str | None  # the schema's pattern, compiled on first use (only fields present pay)
    choices: tuple[str, ...]
    allowed: str

    def matches(self, value: str) -> bool:
        if self.pattern is None:
            return False
        compiled = _COMPILED.get(self.pattern)
        if compiled is None:
            compiled = _COMPILED[self.pattern] = re.compile(self.pattern, re.ASCII)
        return compiled.fullmatch(value) is not None


_COMPILED: dict[str, re.Pattern[str]] = {}


def _load_rules() -> dict[str, FieldRule]:
    # A plain path, not importlib.resources: this runs on every sliced container start.
    with open(os.path.join(os.path.dirname(__file__), "schemas", "request.schema.json")) as f:
        schema = json.load(f)
    rules = {}
    for name, prop in schema["properties"].items():
        rules[name] = FieldRule(
            name=name,
            env=prop["x-env"],
            annotation=prop["x-annotation"],
            max_length=prop.get("maxLength", 64),
            pattern=prop.get("pattern"),
            choices=tuple(prop.get("enum", ())),
            allowed=prop["x-allowed"],
        )
    return rules


RULES: dict[str, FieldRule] = _load_rules()
ENV_NAMES = {rule.env: rule for rule in RULES.values()}
ANNOTATION_NAMES = {rule.annotation: rule for rule in RULES.values()}

# FLEXAI_* names that are flexai's own without being request fields. A container env may carry
# them legitimately (flexai-runtime writes the first group into every sliced container, and an
# image committed from one keeps them), so only names outside these and ENV_NAMES are typos.
# tests/test_request.py checks this list against the names spec.py and mps.py write and the
# getenv() calls in libflexai/.
OWN_ENV_NAMES = (
    # written into a sliced container's env by flexai-runtime (spec.py, mps.py)
    "FLEXAI_SLICE_ID", "FLEXAI_SLICE_FILE", "FLEXAI_REGION", "FLEXAI_DEVICE_UUID",
    "FLEXAI_MEMORY_LIMIT", "FLEXAI_COMPUTE_LIMIT", "FLEXAI_BOARD_DIR", "FLEXAI_SIM_DIR",
    "FLEXAI_COMPUTE_BY",
    # read by libflexai and the simulated drivers inside the container
    "FLEXAI_CONTEXT_MEMORY", "FLEXAI_SIM_DEBUG", "FLEXAI_SIM_TRACE", "FLEXAI_SIM_ACL_SOC",
    # read by flexai's host commands (runtime, hooks, CLI, install.sh)
    "FLEXAI_SOCKET", "FLEXAI_RUNTIME", "FLEXAI_RUNTIME_CONFIG", "FLEXAI_RELEASE_RETRY",
    "FLEXAI_PREFIX", "FLEXAI_PYTHON", "FLEXAI_PREPARE_REFUSED",
)
KNOWN_ENV_NAMES = frozenset(ENV_NAMES) | frozenset(OWN_ENV_NAMES)


class RequestError(ValueError):
    """A rejected request field. str() is the one line the user sees."""

    def __init__(self, source: str, value: str, allowed: str):
        self.source = source
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {source}={show_value(value)}: expected {allowed}")


def show_value(value: str) -> str:
    """Quote a user value for a one-line message: escaped, and cut short if huge."""
    if len(value) > _VALUE_PREVIEW:
        return f"{value[:_VALUE_PREVIEW]!r}... ({len(value)} characters)"
    return repr(value)


@record
class Request:
    """What a container asked for, normalised. Shares are in hundredths (30 means 0.30)."""

    fraction: int | None = None  # share of one card, 1..100 hundredths
    memory_bytes: int | None = None  # absolute memory limit
    memory_fraction: int | None = None  # memory as a share of the card, 1..100 hundredths
    compute: int | None = None  # percent of the card's compute, 1..100
    device: str | None = None  # pin: card index or UUID
    priority: str = DEFAULT_PRIORITY
    compute_mode: str = DEFAULT_COMPUTE_MODE  # hard: capped at the share even on an idle card

    def resolve(self, card_memory: int) -> tuple[int, int]:
        """Memory bytes and compute percent this request takes on a card of `card_memory` bytes.

        A part not given follows the other part's share of the card, so FLEXAI_MEMORY=4GiB on a
        16 GiB card also gets 25 % compute; a request that names no size takes the whole card.
        """
        if self.memory_bytes is not None:
            memory = self.memory_bytes
        elif self.memory_fraction is not None:
            memory = card_memory * self.memory_fraction // 100
        elif self.fraction is not None:
            memory = card_memory * self.fraction // 100
        elif self.compute is not None:
            memory = card_memory * self.compute // 100
        else:
            memory = card_memory
        if self.compute is not None:
            compute = self.compute
        elif self.fraction is not None:
            compute = self.fraction
        else:
            compute = max(1, min(100, math.ceil(memory * 100 / card_memory))) if card_memory else 100
        return memory, compute

    def to_json(self) -> dict:
        """Wire form for flexaid (validated there against protocol.schema.json#/$defs/request)."""
        return {
            key: value
            for key, value in (
                ("fraction", self.fraction),
                ("memory_bytes", self.memory_bytes),
                ("memory_fraction", self.memory_fraction),
                ("compute", self.compute),
                ("device", self.device),
                ("priority", self.priority),
                ("compute_mode", None if self.compute_mode == DEFAULT_COMPUTE_MODE else self.compute_mode),
            )
            if value is not None
        }

    @classmethod
    def from_json(cls, data: Mapping) -> "Request":
        return cls(**{k: data[k] for k in fields(cls) if k in data})

    def to_fields(self) -> dict[str, str]:
        """Back to the raw strings a user would write (parse_fields(to_fields(r)) == r)."""
        fields: dict[str, str] = {}
        if self.fraction is not None:
            fields["fraction"] = _render_share(self.fraction)
        if self.memory_bytes is not None:
            fields["memory"] = f"{self.memory_bytes}B"
        elif self.memory_fraction is not None:
            fields["memory"] = _render_share(self.memory_fraction)
        if self.compute is not None:
            fields["compute"] = str(self.compute)
        if self.device is not None:
            fields["device"] = self.device
        if self.priority != DEFAULT_PRIORITY:
            fields["priority"] = self.priority
        if self.compute_mode != DEFAULT_COMPUTE_MODE:
            fields["compute_mode"] = self.compute_mode
        return fields


def _render_share(hundredths: int) -> str:
    return "1" if hundredths == 100 else f"0.{hundredths:02d}"


def _parse_share(text: str) -> int:
    """'0.3' -> 30, '.05' -> 5, '1.00' -> 100. `text` already matched the schema pattern."""
    whole, _, frac = text.partition(".")
    return int(whole or "0") * 100 + int((frac + "00")[:2])


def parse_memory(text: str) -> tuple[int | None, int | None]:
    """-> (bytes, None) for a size, (None, hundredths) for a share of the card."""
    match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))? ?([A-Za-z]+)", text, re.ASCII)
    if match is None:
        return None, _parse_share(text)
    whole, frac, unit = match.groups()
    scale = _UNITS[unit[0].lower()]
    frac = frac or ""
    # Exact integer arithmetic: '1.5GiB' must be 1610612736, not a float's approximation.
    total = (int(whole) * 10 ** len(frac) + int(frac or "0")) * scale // 10 ** len(frac)
    return total, None


def check_field(rule: FieldRule, source: str, raw: str) -> str:
    """The value with surrounding blanks removed, or RequestError naming `source`."""
    value = raw.strip(" \t")
    ok = 0 < len(value) <= rule.max_length and (
        rule.matches(value) or value in rule.choices
    )
    if not ok:
        raise RequestError(source, raw, rule.allowed)
    return value


def parse_fields(fields: Mapping[str, str], sources: Mapping[str, str] | None = None) -> Request:
    """Build a Request from raw field strings keyed by field name (fraction, memory, ...).

    `sources` maps a field name to what the user wrote it as (an env name or annotation key),
    so an error names what the user can fix.
    """
    sources = sources or {}
    values = {}
    for name, raw in fields.items():
        rule = RULES[name]
        values[name] = check_field(rule, sources.get(name, rule.env), raw)

    memory_bytes = memory_fraction = None
    if "memory" in values:
        memory_bytes, memory_fraction = parse_memory(values["memory"])
        if memory_bytes is not None and not 0 < memory_bytes <= _MAX_BYTES:
            rule = RULES["memory"]
            raise RequestError(sources.get("memory", rule.env), fields["memory"], rule.allowed)
    return Request(
        fraction=_parse_share(values["fraction"]) if "fraction" in values else None,
        memory_bytes=memory_bytes,
        memory_fraction=memory_fraction,
        compute=int(values["compute"].rstrip("%")) if "compute" in values else None,
        device=values.get("device"),
        priority=values.get("priority", DEFAULT_PRIORITY),
        compute_mode=values.get("compute_mode", DEFAULT_COMPUTE_MODE),
    )


def closest(name: str, known: Iterable[str], prefix: str) -> str | None:
    """The known name `name` most likely misspells, or None when none is close. Compared
    without the shared `prefix` (FLEXAI_, flexai.io/), which would make every name look close."""
    import difflib  # only when a name is unknown: ~2 ms nobody else pays

    bare = {k[len(prefix):].upper(): k for k in known}
    match = difflib.get_close_matches(name[len(prefix):].upper(), list(bare), n=1, cutoff=0.6)
    return bare[match[0]] if match else None


def env_warnings(env: Iterable[str]) -> list[str]:
    """One line per FLEXAI_* name in a container's env that flexai neither reads nor writes
    (KNOWN_ENV_NAMES): most likely a misspelled request, which would otherwise leave the
    container unsliced without a word. Not an error: the container runs as it asked."""
    found: dict[str, None] = {}  # ordered, without repeats
    for entry in env:
        if entry.startswith(ENV_PREFIX):
            name = entry.partition("=")[0]
            if name not in KNOWN_ENV_NAMES:
                found[name] = None
    unknown = list(found)
    warnings = []
    for name in unknown[:_MAX_WARNINGS]:
        if len(name) > _VALUE_PREVIEW or not name.isprintable():
            shown, guess = show_value(name), None  # garbage, not a typo: no guess to compute
        else:
            shown, guess = name, closest(name, ENV_NAMES, ENV_PREFIX)  # what a user sets; the rest flexai writes
        hint = (f"did you mean {guess}?" if guess
                else f"flexai's request variables are {', '.join(ENV_NAMES)}")
        warnings.append(f"{shown} in the container's environment is not a flexai variable and does nothing; {hint}")
    if len(unknown) > _MAX_WARNINGS:
        warnings.append(f"{len(unknown) - _MAX_WARNINGS} more FLEXAI_* names in the container's environment "
                        f"are not flexai variables")
    return warnings


def unknown_annotation(key: str, value: str) -> RequestError:
    """The error for a flexai.io/* key flexai does not know, with the key it most likely means."""
    keys = [*ANNOTATION_NAMES, CONTAINERS_ANNOTATION]
    guess = closest(key, keys, ANNOTATION_PREFIX)
    known = ", ".join(sorted(keys))
    hint = f"; did you mean {guess}?" if guess else ""
    return RequestError(f"annotation {key}", value, f"a known annotation key ({known}){hint}")


def from_container(env: Iterable[str], annotations: Mapping[str, str]) -> Request | None:
    """The request of an OCI process env list and spec annotations, or None when it has none.

    Annotations win over env. An unknown flexai.io/* annotation is an error (a typo such as
    flexai.io/fractoin must not silently start an unlimited container); unknown FLEXAI_* env
    names are not, because flexai itself writes FLEXAI_* variables for the library and an image
    may carry them: `env_warnings` names the unknown ones for the caller to print.
    A Kubernetes pod sandbox has no request whatever it carries (kube.sandbox_reason): the CRI
    copies the pod's flexai.io/* annotations onto it too, and its slice would be held twice.
    With flexai.io/containers, a container not named there ignores the flexai.io/* annotations
    the CRI copied onto it from the pod (kube.not_listed_reason); its own env still counts.
    """
    if sandbox_reason(annotations) is not None:
        return None
    pod_request = True  # the flexai.io/* annotations are this container's
    if CONTAINERS_ANNOTATION in annotations:
        names = parse_containers(annotations[CONTAINERS_ANNOTATION])
        if names is None:
            raise RequestError(f"annotation {CONTAINERS_ANNOTATION}", str(annotations[CONTAINERS_ANNOTATION]),
                               "the names of the pod's containers that take its flexai.io/* request, "
                               "separated by commas")
        pod_request = not_listed_reason(annotations, names) is None
    fields: dict[str, str] = {}
    sources: dict[str, str] = {}
    seen_env: set[str] = set()
    for entry in env:
        if not entry.startswith(ENV_PREFIX):
            continue
        name, _, value = entry.partition("=")
        rule = ENV_NAMES.get(name)
        # getenv() returns the first of duplicate entries, so the first is what the process sees.
        if rule is None or name in seen_env:
            continue
        seen_env.add(name)
        fields[rule.name] = value
        sources[rule.name] = name
    for key, value in annotations.items():
        if not key.startswith(ANNOTATION_PREFIX) or key == CONTAINERS_ANNOTATION:
            continue
        rule = ANNOTATION_NAMES.get(key)
        if rule is None:
            raise unknown_annotation(key, value)
        if not pod_request:
            continue  # another container's (flexai.io/containers); its own env may still ask
        fields[rule.name] = value
        sources[rule.name] = f"annotation {key}"
    if not fields:
        return None
    return parse_fields(fields, sources)
