"""A strict reader of Prometheus' text exposition format (version 0.0.4), for tests: flexai's
/metrics must read as Prometheus reads it, without making prometheus_client a dependency.

`parse` raises ValueError naming the line for anything Prometheus would reject, and for what it
would take but a scrape of flexai should never contain: a family split in two, a sample before
its TYPE, a repeated series, a counter not named *_total, a histogram whose buckets are not
cumulative or whose +Inf bucket is not its _count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KINDS = ("counter", "gauge", "histogram", "summary", "untyped")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass
class Family:
    name: str
    kind: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, name: str | None = None, **labels: str) -> float:
        """The one sample of `name` (default: the family's name) whose labels include `labels`."""
        found = [v for n, l, v in self.samples if n == (name or self.name) and labels.items() <= l.items()]
        if len(found) != 1:
            raise KeyError(f"{len(found)} samples of {name or self.name} with {labels}")
        return found[0]


def _labels(text: str, lineno: int) -> tuple[dict[str, str], str]:
    """Parse `{a="b",...}` at the start of `text`; returns the labels and what follows."""
    labels: dict[str, str] = {}
    i = 1
    while True:
        if text[i:i + 1] == "}" and not labels:
            return labels, text[i + 1:]
        match = _LABEL.match(text, i)
        if not match or text[match.end():match.end() + 2] != '="':
            raise ValueError(f"line {lineno}: bad label name at {text[i:i + 20]!r}")
        name, i = match.group(), match.end() + 2
        value = []
        while True:
            if i >= len(text):
                raise ValueError(f"line {lineno}: unterminated label value")
            c = text[i]
            if c == "\\":
                if text[i + 1:i + 2] not in _ESCAPES:
                    raise ValueError(f"line {lineno}: bad escape in label {name}")
                value.append(_ESCAPES[text[i + 1]])
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ValueError(f"line {lineno}: raw newline in label {name}")
            else:
                value.append(c)
                i += 1
        if name in labels:
            raise ValueError(f"line {lineno}: label {name} twice")
        labels[name] = "".join(value)
        if text[i:i + 1] == "}":
            return labels, text[i + 1:]
        if text[i:i + 1] != ",":
            raise ValueError(f"line {lineno}: expected , or }} after label {name}")
        i += 1


def _value(text: str, lineno: int) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"line {lineno}: bad value {text!r}") from None


def _family_of(sample: str, families: dict[str, Family]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[: -len(suffix)]
        if sample.endswith(suffix) and base in families and families[base].kind in ("histogram", "summary"):
            return base
    return sample


def parse(text: str) -> dict[str, Family]:
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families: dict[str, Family] = {}
    finished: set[str] = set()
    current: str | None = None
    series: set[tuple[str, tuple]] = set()

    def enter(name: str, lineno: int) -> Family:
        nonlocal current
        if name != current:
            if name in finished:
                raise ValueError(f"line {lineno}: family {name} appears in two places")
            if current is not None:
                finished.add(current)
            current = name
        return families.setdefault(name, Family(name))

    for lineno, line in enumerate(text[:-1].split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if not _NAME.fullmatch(parts[2]):
                    raise ValueError(f"line {lineno}: bad metric name {parts[2]!r}")
                family = enter(parts[2], lineno)
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    if family.help is not None:
                        raise ValueError(f"line {lineno}: second HELP for {family.name}")
                    family.help = rest
                else:
                    if family.samples or family.kind != "untyped" or rest not in _KINDS:
                        raise ValueError(f"line {lineno}: TYPE {rest!r} for {family.name} is late, repeated or unknown")
                    family.kind = rest
            continue  # any other comment is ignored, as Prometheus does
        match = _NAME.match(line)
        if not match:
            raise ValueError(f"line {lineno}: no metric name")
        name, rest = match.group(), line[match.end():]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            labels, rest = _labels(rest, lineno)
        fields = rest.split()
        if not rest.startswith(" ") or len(fields) not in (1, 2):
            raise ValueError(f"line {lineno}: expected ' value [timestamp]' after {name}")
        value = _value(fields[0], lineno)
        family = enter(_family_of(name, families), lineno)
        key = (name, tuple(sorted(labels.items())))
        if key in series:
            raise ValueError(f"line {lineno}: series {name}{labels} twice")
        series.add(key)
        family.samples.append((name, labels, value))
    for family in families.values():
        _check(family)
    return families


def _check(family: Family) -> None:
    if family.kind == "counter":
        for name, labels, value in family.samples:
            if not name.endswith("_total") or not value >= 0:
                raise ValueError(f"counter {name}{labels} = {value}: counters are *_total and never negative")
    if family.kind != "histogram":
        return
    groups: dict[tuple, dict[str, list]] = {}
    for name, labels, value in family.samples:
        suffix = name[len(family.name):]
        if suffix not in ("_bucket", "_sum", "_count"):
            raise ValueError(f"histogram {family.name} has a sample {name}")
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        groups.setdefault(rest, {"_bucket": [], "_sum": [], "_count": []})[suffix].append((labels.get("le"), value))
    for rest, parts in groups.items():
        if len(parts["_sum"]) != 1 or len(parts["_count"]) != 1 or not parts["_bucket"]:
            raise ValueError(f"histogram {family.name}{dict(rest)} lacks its _sum, _count or buckets")
        bounds = [_value(le, 0) if le is not None else None for le, _ in parts["_bucket"]]
        if None in bounds or bounds != sorted(bounds) or bounds[-1] != math.inf:
            raise ValueError(f"histogram {family.name}{dict(rest)}: le bounds {bounds} not ascending up to +Inf")
        counts = [v for _, v in parts["_bucket"]]
        if counts != sorted(counts) or counts[-1] != parts["_count"][0][1]:
            raise ValueError(f"histogram {family.name}{dict(rest)}: buckets {counts} not cumulative up to _count")
