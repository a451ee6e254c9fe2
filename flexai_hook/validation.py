"""JSON Schema validation for what crosses a process boundary (daemon side only: it is slow to import).

Two validators per schema: fastjsonschema compiles the schema to Python code and answers
"valid?" in ~10 µs (jsonschema takes ~250 µs per message); jsonschema stays the reference. It
judges every message the fast one rejects and writes the one-line reason, so a rejection is
never the fast validator's word alone. tests/test_validation.py checks the two agree.

flexaid's busiest messages (reserve, release, status: two per container) go first through a
hand-written check of protocol.schema.json's rules for them (`_HAND_WRITTEN`, ~1-2 µs; the
compiled one spends ~10 µs, most of it on release's `oneOf`, which it decides by raising and
catching an exception). It only ever says "valid": anything it does not accept goes down the
path above, so the schema stays the contract, and the tests check that it accepts nothing the
schema rejects and everything fastjsonschema accepts.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

import fastjsonschema
import jsonschema


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return json.loads(resources.files("flexai_hook").joinpath(f"schemas/{name}").read_text())


@lru_cache(maxsize=None)
def validator(name: str, definition: str | None = None) -> jsonschema.protocols.Validator:
    """A validator for schema file `name`, or for its `$defs/<definition>`."""
    schema = load_schema(name)
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    cls = jsonschema.validators.validator_for(load_schema(name))
    cls.check_schema(schema)
    return cls(schema)


@lru_cache(maxsize=None)
def fast_validator(name: str, definition: str | None = None):
    """fastjsonschema's compiled check for the same schema (raises JsonSchemaException)."""
    schema = load_schema(name)
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    return fastjsonschema.compile(schema)


# protocol.schema.json#/$defs/container_id's pattern, anchored with fullmatch: stricter than
# the schema's `$` (which re.search lets match before a final newline), so such an id is left
# to the validators above, which decide it as they always have.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+=@-]*").fullmatch
_SHARE_KEYS = ("fraction", "memory_fraction", "compute")
_REQUEST_KEYS = frozenset(("fraction", "memory_bytes", "memory_fraction", "compute", "device", "priority",
                           "compute_mode"))
_RESERVE_KEYS = frozenset(("op", "container_id", "request", "runtime"))
_RUNTIME_KEYS = frozenset(("binary", "root", "pid", "pid_start"))
_PRIORITIES = ("high", "normal", "low")
_COMPUTE_MODES = ("work-conserving", "hard")
_INT64_MAX = 9223372036854775807


def _integer(value: object) -> bool:
    """JSON Schema's "integer": an int but not a bool, or a float with no fraction (30.0)."""
    return type(value) is int or (type(value) is float and value.is_integer())


def _container_id_ok(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= 1024 and _CONTAINER_ID(value) is not None


def _request_ok(request: object) -> bool:
    """#/$defs/request."""
    if type(request) is not dict or not _REQUEST_KEYS.issuperset(request):
        return False
    for key in _SHARE_KEYS:
        if key in request:
            value = request[key]
            if not _integer(value) or not 1 <= value <= 100:
                return False
    if "memory_bytes" in request:
        value = request["memory_bytes"]
        if not _integer(value) or not 1 <= value <= _INT64_MAX or "memory_fraction" in request:
            return False
    if "device" in request:
        value = request["device"]
        if type(value) is not str or not 0 < len(value) <= 64:
            return False
    if "priority" in request and not (type(request["priority"]) is str and request["priority"] in _PRIORITIES):
        return False
    return "compute_mode" not in request or (type(request["compute_mode"]) is str
                                             and request["compute_mode"] in _COMPUTE_MODES)


def _runtime_ok(runtime: object) -> bool:
    """#/$defs/runtime."""
    if type(runtime) is not dict or not _RUNTIME_KEYS.issuperset(runtime):
        return False
    if "binary" in runtime:
        value = runtime["binary"]
        if type(value) is not str or len(value) > 4096 or not value.startswith("/"):
            return False
    if "root" in runtime:
        value = runtime["root"]
        if type(value) is not str or len(value) > 4096:
            return False
    if "pid" in runtime and not (_integer(runtime["pid"]) and runtime["pid"] >= 1):
        return False
    return "pid_start" not in runtime or (_integer(runtime["pid_start"]) and runtime["pid_start"] >= 0)


def _reserve_ok(message: object) -> bool:
    """#/$defs/reserve_message."""
    return (type(message) is dict and _RESERVE_KEYS.issuperset(message) and message.get("op") == "reserve"
            and type(message["op"]) is str and "container_id" in message and "request" in message
            and _container_id_ok(message["container_id"]) and _request_ok(message["request"])
            and ("runtime" not in message or _runtime_ok(message["runtime"])))


def _release_ok(message: object) -> bool:
    """#/$defs/release_message: a container id or an OCI state (with a valid id), not both."""
    if type(message) is not dict or message.get("op") != "release" or type(message["op"]) is not str:
        return False
    if len(message) != 2:  # op and exactly one of container_id and state (oneOf), nothing else
        return False
    if "container_id" in message:
        return _container_id_ok(message["container_id"])
    state = message.get("state")
    return type(state) is dict and "id" in state and _container_id_ok(state["id"])


def _status_ok(message: object) -> bool:
    """#/$defs/status_message."""
    return type(message) is dict and len(message) == 1 and message.get("op") == "status" and type(message["op"]) is str


_HAND_WRITTEN = {
    ("protocol.schema.json", "reserve_message"): _reserve_ok,
    ("protocol.schema.json", "release_message"): _release_ok,
    ("protocol.schema.json", "status_message"): _status_ok,
}


def problem(name: str, instance: object, definition: str | None = None) -> str | None:
    """One line describing why `instance` does not match, or None when it does."""
    check = _HAND_WRITTEN.get((name, definition))
    if check is not None and check(instance):
        return None
    try:
        fast_validator(name, definition)(instance)
        return None
    except fastjsonschema.JsonSchemaException:
        pass  # jsonschema decides and explains
    error = jsonschema.exceptions.best_match(validator(name, definition).iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{message} (at /{where})" if where else message
