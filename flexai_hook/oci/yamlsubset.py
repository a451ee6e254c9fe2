"""The part of YAML that CDI specs are written in, read with the standard library only.

CDI specs (flexai_hook/oci/cdi.py) are read on the container start path, where flexai-runtime's
Python implementation imports nothing outside the standard library, so PyYAML is not an option.
`nvidia-ctk cdi generate` (and people copying its output) write block mappings and sequences
(sequences either indented under their key or level with it), plain, single- and double-quoted
scalars, comments, a leading `---`, and now and then a one-line flow list (`[ro, bind]`). That is
what this reads. Anything else (anchors, aliases, tags, block scalars `|`/`>`, multi-line flow
collections or plain scalars) is refused with the line number: never half-read.

Plain scalars come back as `Plain` (a str that remembers it was not quoted) so the caller can
resolve them as the Go loader the engines use does (sigs.k8s.io/yaml over go-yaml v2, YAML 1.1):
`resolve` gives None, a bool, an int (`0o17`, `017` and `0x1f` too) or a float, and a field
declared as a string keeps the text as written (`name: 0` is the name "0").

Pure functions: text in, values out.
"""

from __future__ import annotations

import re


class YamlError(ValueError):
    """str() is one line: `line N: what is wrong`."""


class Plain(str):
    """An unquoted scalar, kept as written; `resolve` says what YAML 1.1 makes of it."""


_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_TRUE = frozenset(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"))
_FALSE = frozenset(("n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"))
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
_OCTAL_11 = re.compile(r"[-+]?0[0-7_]+")  # YAML 1.1: a leading zero means octal
_OCTAL_12 = re.compile(r"[-+]?0o[0-7_]+")
_HEX = re.compile(r"[-+]?0x[0-9a-fA-F_]+")
_BINARY = re.compile(r"[-+]?0b[01_]+")
_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+]?[0-9]+)?")


def resolve(value: object) -> object:
    """What an unquoted scalar means (YAML 1.1, as go-yaml v2 reads it); other values as they are."""
    if not isinstance(value, Plain):
        return value
    text = str(value)
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    bare = digits.lstrip("+-")
    if _DECIMAL.fullmatch(text):
        return int(digits)
    if _OCTAL_12.fullmatch(text):
        return sign * int(bare[2:], 8)
    if _OCTAL_11.fullmatch(text):
        return sign * int(bare, 8)
    if _HEX.fullmatch(text):
        return sign * int(bare[2:], 16)
    if _BINARY.fullmatch(text):
        return sign * int(bare[2:], 2)
    if _FLOAT.fullmatch(text) and any(c.isdigit() for c in text):
        return float(digits)
    return text


class _Line:
    __slots__ = ("indent", "text", "number")

    def __init__(self, indent: int, text: str, number: int):
        self.indent, self.text, self.number = indent, text, number


def load(text: str) -> object:
    """The one document in `text` as dicts, lists, `Plain` and str. Raises YamlError."""
    lines = _lines(text)
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0].indent)
    if end < len(lines):
        raise YamlError(f"line {lines[end].number}: unexpected indentation or content")
    return value


def _lines(text: str) -> list[_Line]:
    out = []
    started = ended = False
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip(" \t"))]:
            raise YamlError(f"line {number}: a tab in the indentation (YAML indents with spaces)")
        body = _strip_comment(raw, number).rstrip()
        stripped = body.lstrip(" ")
        if not stripped:
            continue
        if ended:
            raise YamlError(f"line {number}: content after the document's end '...' (a CDI spec file holds one)")
        if body.startswith("%"):
            raise YamlError(f"line {number}: YAML directives are not supported")
        if body == "---" or body.startswith("--- "):
            if started:
                raise YamlError(f"line {number}: a second YAML document (a CDI spec file holds one)")
            rest = body[3:].strip()
            if rest:
                raise YamlError(f"line {number}: content after '---' is not supported")
            started = True
            continue
        if body == "...":
            ended = True
            continue
        started = True
        out.append(_Line(len(body) - len(stripped), stripped, number))
    return out


def _strip_comment(raw: str, number: int) -> str:
    """The line without its comment: a '#' at the start or after a space, outside quotes."""
    quote = None
    previous = " "
    i = 0
    while i < len(raw):
        c = raw[i]
        if quote == '"':
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quote = None
        elif quote == "'":
            if c == "'":
                if raw[i + 1:i + 2] == "'":
                    i += 2
                    continue
                quote = None
        elif c in "\"'" and _token_start(raw, i):
            quote = c
        elif c == "#" and previous in " \t":
            return raw[:i]
        previous = c
        i += 1
    if quote is not None:
        raise YamlError(f"line {number}: a quoted scalar does not end on its line")
    return raw


def _token_start(raw: str, i: int) -> bool:
    """A quote here opens a quoted scalar: it starts a value, not the middle of a word."""
    stripped = raw[:i].rstrip(" ")
    if not stripped or stripped[-1] in "[{,":
        return True
    spaced = len(stripped) < i  # "- 'x'", "key: 'x'": the indicator, a space, the quote
    if stripped[-1] == "-":
        return spaced and (len(stripped) == 1 or stripped[-2] == " ")
    return spaced and stripped[-1] in ":?"


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _block(lines: list[_Line], i: int, indent: int) -> tuple[object, int]:
    if _is_item(lines[i].text):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[list, int]:
    items: list = []
    while i < len(lines) and lines[i].indent == indent and _is_item(lines[i].text):
        line = lines[i]
        rest = line.text[1:].lstrip(" ")
        if not rest:
            if i + 1 < len(lines) and lines[i + 1].indent > indent:
                value, i = _block(lines, i + 1, lines[i + 1].indent)
            else:
                value, i = None, i + 1
        elif _is_item(rest) or _key_split(rest, line.number) is not None:
            # "- key: value" / "- - x": a collection whose first line starts after the dash
            column = indent + len(line.text) - len(rest)
            lines[i] = _Line(column, rest, line.number)
            value, i = _block(lines, i, column)
        else:
            value, i = _scalar(rest, line.number), i + 1
        items.append(value)
    return items, i


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[dict, int]:
    result: dict = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        if _is_item(line.text):
            raise YamlError(f"line {line.number}: a sequence item where a mapping key was expected")
        split = _key_split(line.text, line.number)
        if split is None:
            raise YamlError(f"line {line.number}: expected 'key: value'")
        key, rest = split
        if key in result:
            raise YamlError(f"line {line.number}: key {key!r} appears twice")
        if rest:
            value, i = _scalar(rest, line.number), i + 1
        elif i + 1 < len(lines) and (lines[i + 1].indent > indent
                                     or (lines[i + 1].indent == indent and _is_item(lines[i + 1].text))):
            value, i = _block(lines, i + 1, lines[i + 1].indent)
        else:
            value, i = None, i + 1
        result[key] = value
    if i < len(lines) and lines[i].indent > indent:
        raise YamlError(f"line {lines[i].number}: unexpected indentation")
    return result, i


def _key_split(text: str, number: int) -> tuple[str, str] | None:
    """(key, rest) for `key: rest` / `key:`; None when the text is not a mapping entry."""
    if text[0] in "\"'":
        key, end = _quoted(text, 0, number)
        after = text[end:]
        if after == ":" or after.startswith(": "):
            return key, after[1:].strip()
        return None
    if text[0] in "[{":
        return None
    at = text.find(": ")
    if at < 0:
        if not text.endswith(":"):
            return None
        at = len(text) - 1
    key = text[:at].rstrip()
    if key.startswith(("?", "&", "*", "!")):
        raise YamlError(f"line {number}: complex keys, anchors, aliases and tags are not supported")
    return key, text[at + 1:].strip()


def _scalar(text: str, number: int) -> object:
    if text[0] in "\"'":
        value, end = _quoted(text, 0, number)
        if text[end:].strip():
            raise YamlError(f"line {number}: text after a quoted scalar")
        return value
    if text[0] in "[{":
        value, end = _flow(text, 0, number)
        if text[end:].strip():
            raise YamlError(f"line {number}: text after a flow collection")
        return value
    if text[0] in "&*!|>%@`":
        raise YamlError(f"line {number}: {text[0]!r} (anchors, aliases, tags, block scalars) is not supported")
    return Plain(text)


_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
            "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0",
            "L": "\u2028", "P": "\u2029"}
_HEX_LENGTH = {"x": 2, "u": 4, "U": 8}


def _quoted(text: str, start: int, number: int) -> tuple[str, int]:
    """A quoted scalar starting at `start`: its value and the index after its closing quote."""
    quote = text[start]
    out = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                if text[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), i + 1
            out.append(c)
            i += 1
            continue
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            code = text[i + 1:i + 2]
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                i += 2
                continue
            if code in _HEX_LENGTH:
                digits = text[i + 2:i + 2 + _HEX_LENGTH[code]]
                if len(digits) != _HEX_LENGTH[code] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise YamlError(f"line {number}: bad escape \\{code}{digits}")
                out.append(chr(int(digits, 16)))
                i += 2 + len(digits)
                continue
            raise YamlError(f"line {number}: unknown escape \\{code}")
        out.append(c)
        i += 1
    raise YamlError(f"line {number}: a quoted scalar does not end on its line")


def _flow(text: str, start: int, number: int) -> tuple[object, int]:
    """A flow list or mapping on one line (`[a, "b"]`, `{k: v}`): its value and where it ends."""
    closing = "]" if text[start] == "[" else "}"
    items: list = []
    mapping: dict = {}
    i = start + 1
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text):
            raise YamlError(f"line {number}: a flow collection must end on its line")
        if text[i] == closing:
            return (items if closing == "]" else mapping), i + 1
        value, i = _flow_item(text, i, number)
        if i >= len(text):
            raise YamlError(f"line {number}: a flow collection must end on its line")
        while i < len(text) and text[i] == " ":
            i += 1
        if closing == "}":
            if i >= len(text) or text[i] != ":":
                raise YamlError(f"line {number}: expected ':' in a flow mapping")
            key = value
            while True:
                i += 1
                if i >= len(text) or text[i] != " ":
                    break
            value, i = _flow_item(text, i, number)
            if not isinstance(key, str):
                raise YamlError(f"line {number}: flow mapping keys must be scalars")
            mapping[str(key)] = value
            while i < len(text) and text[i] == " ":
                i += 1
        else:
            items.append(value)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != closing:
            raise YamlError(f"line {number}: expected ',' or {closing!r} in a flow collection")


def _flow_item(text: str, i: int, number: int) -> tuple[object, int]:
    if i >= len(text):
        raise YamlError(f"line {number}: a flow collection must end on its line")
    if text[i] in "\"'":
        return _quoted(text, i, number)
    if text[i] in "[{":
        return _flow(text, i, number)
    end = i
    while end < len(text) and text[end] not in ",]}" and not (text[end] == ":" and text[end + 1:end + 2] in (" ", "")):
        end += 1
    word = text[i:end].strip()
    if word[:1] in ("&", "*", "!"):
        raise YamlError(f"line {number}: anchors, aliases and tags are not supported")
    return Plain(word), end
