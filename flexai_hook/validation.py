"""JSON Schema validation for what crosses a process boundary (daemon side only: it is slow to import).

Two validators per schema: fastjsonschema compiles the schema to Python code and answers
"valid?" in ~10 µs, which is what the daemon's hot path needs (jsonschema takes ~250 µs per
message); jsonschema stays the reference. It judges every message the fast one rejects and
writes the one-line reason, so a rejection is never the fast validator's word alone.
tests/test_validation.py checks the two agree.
"""

from __future__ import annotations

import json
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


def problem(name: str, instance: object, definition: str | None = None) -> str | None:
    """One line describing why `instance` does not match, or None when it does."""
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
