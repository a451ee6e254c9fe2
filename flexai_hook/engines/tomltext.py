"""Conservative edits of TOML text: change one key or one table, leave every other byte alone.

tomllib (Python 3.11) reads TOML but cannot write it, and rewriting a whole file from a parsed
tree would drop its comments and layout. Engine configs are edited here as text instead: find a
table header or a key's line, replace or insert just that, and check the result with tomllib.
`dumps` writes whole documents for files flexai owns outright (the containerd drop-in).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER = re.compile(r"^\s*\[\[?([^\[\]]|\"[^\"]*\"|'[^']*')+\]\]?\s*(#.*)?$")


class TomlError(ValueError):
    pass


def loads(text: str, path: str) -> dict:
    """Parse, with the error as one line naming the file."""
    from . import ConfigError

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); flexai did not change it") from None


# --- writing -------------------------------------------------------------------------------

def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, Sequence):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    raise TomlError(f"cannot write {type(v).__name__} as TOML")


def dumps(data: Mapping, path: tuple[str, ...] = (), indent: str = "  ") -> str:
    """A TOML document for `data`: scalars first, then one [table] per nested mapping."""
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
    pad = indent * max(len(path) - 2, 0)  # [plugins."x"] at the margin, its sub-tables indented
    out = []
    if path and (scalars or not tables):
        out.append(f"\n{pad}[{'.'.join(key(p) for p in path)}]\n")
    for k, v in scalars:
        out.append(f"{pad}{indent if path else ''}{key(k)} = {value(v)}\n")
    for k, v in tables:
        out.append(dumps(v, path + (k,), indent))
    return "".join(out)


# --- reading the layout --------------------------------------------------------------------

def header_path(line: str) -> tuple[str, ...] | None:
    """The table path of a `[a."b".c]` header line, or None when the line is not a header."""
    if not _HEADER.match(line):
        return None
    stripped = line.strip()
    if stripped.startswith("[["):
        return None  # arrays of tables: never edited here, but they end the table before them
    try:
        doc = tomllib.loads(stripped[: stripped.rindex("]") + 1])
    except tomllib.TOMLDecodeError:
        return None
    parts: list[str] = []
    while isinstance(doc, dict) and len(doc) == 1:
        (name, doc), = doc.items()
        parts.append(name)
    return tuple(parts)


def is_header(line: str) -> bool:
    return bool(_HEADER.match(line)) and not line.lstrip().startswith("#")


def headers(lines: Sequence[str]) -> list[tuple[int, tuple[str, ...] | None]]:
    """(line index, table path or None for [[arrays]]) of every table header, in order,
    skipping lines inside multi-line strings and arrays."""
    found = []
    i = 0
    text_offsets = _line_offsets(lines)
    text = "".join(lines)
    while i < len(lines):
        line = lines[i]
        if is_header(line):
            found.append((i, header_path(line)))
            i += 1
            continue
        m = _KEY_LINE.match(line)
        if m:
            end = value_end(text, text_offsets[i] + m.end())
            i = _line_at(text_offsets, end - 1) + 1 if end > text_offsets[i] + m.end() else i + 1
            continue
        i += 1
    return found


_KEY_LINE = re.compile(r"""^\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'))*\s*=\s*""")


def _line_offsets(lines: Sequence[str]) -> list[int]:
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    return offsets


def _line_at(offsets: list[int], pos: int) -> int:
    import bisect

    return max(bisect.bisect_right(offsets, pos) - 1, 0)


def value_end(text: str, start: int) -> int:
    """Index just past the TOML value that starts at (or after spaces from) `start`."""
    i = start
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return i
    if text.startswith(('"""', "'''"), i):
        close = text.find(text[i:i + 3], i + 3)
        return n if close < 0 else close + 3
    if text[i] in "\"'":
        return _string_end(text, i)
    if text[i] in "[{":
        depth = 0
        while i < n:
            c = text[i]
            if c in "\"'":
                i = _string_end(text, i)
                continue
            if c == "#":
                nl = text.find("\n", i)
                i = n if nl < 0 else nl
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return n
    while i < n and text[i] not in "\n#":
        i += 1
    return len(text[:i].rstrip(" \t")) if i > start else i


def _string_end(text: str, i: int) -> int:
    quote = text[i]
    if text.startswith(quote * 3, i):
        close = text.find(quote * 3, i + 3)
        return len(text) if close < 0 else close + 3
    j = i + 1
    while j < len(text) and text[j] != "\n":
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    return j


# --- editing -------------------------------------------------------------------------------

def table_range(lines: Sequence[str], path: tuple[str, ...]) -> tuple[int, int] | None:
    """(header line, end line exclusive) of the table `path`; for () the top level before any
    header. None when the table has no header of its own."""
    found = headers(lines)
    if path == ():
        return (-1, found[0][0] if found else len(lines))
    for n, (idx, p) in enumerate(found):
        if p == path:
            end = found[n + 1][0] if n + 1 < len(found) else len(lines)
            return (idx, end)
    return None


def key_span(text: str, path: tuple[str, ...], name: str) -> tuple[int, int] | None:
    """(start of the key's line, index past its value and the line's end) of `name` directly in
    table `path`, or None when the table has no such key line."""
    lines = text.splitlines(keepends=True)
    rng = table_range(lines, path)
    if rng is None:
        return None
    offsets = _line_offsets(lines)
    pattern = re.compile(r"^\s*(?:%s|\"%s\"|'%s')\s*=\s*" % (re.escape(name), re.escape(name), re.escape(name)))
    i = rng[0] + 1
    while i < rng[1]:
        m = pattern.match(lines[i])
        if m:
            end = value_end(text, offsets[i] + m.end())
            nl = text.find("\n", end)
            return (offsets[i], len(text) if nl < 0 else nl + 1)
        km = _KEY_LINE.match(lines[i])
        if km:
            end = value_end(text, offsets[i] + km.end())
            i = _line_at(offsets, max(end - 1, offsets[i])) + 1
            continue
        i += 1
    return None


def set_key(text: str, path: tuple[str, ...], name: str, rendered: str, after_key: str | None = None) -> str:
    """`text` with `name = rendered` in table `path`: the key's line replaced where it exists,
    else inserted after the table's header (or after `after_key`'s line at the top level),
    else a new table appended at the end."""
    line = f"{key(name)} = {rendered}"
    span = key_span(text, path, name)
    if span is not None:
        old = text[span[0]:span[1]]
        indent = old[: len(old) - len(old.lstrip())]
        comment = _trailing_comment(text, span)
        return text[: span[0]] + indent + line + comment + "\n" + text[span[1]:]
    lines = text.splitlines(keepends=True)
    rng = table_range(lines, path)
    if rng is not None:
        offsets = _line_offsets(lines) + [len(text)]
        insert_at = rng[0] + 1
        if path == () and after_key is not None:
            anchor = key_span(text, (), after_key)
            if anchor is not None:
                pos = anchor[1]
                return text[:pos] + line + "\n" + text[pos:]
        indent = _indent_of(lines, insert_at, rng[1])
        pos = offsets[insert_at] if insert_at < len(offsets) else len(text)
        prefix = "" if pos == 0 or text[pos - 1] == "\n" else "\n"
        return text[:pos] + prefix + indent + line + "\n" + text[pos:]
    sep = "" if not text.strip() else ("\n" if text.endswith("\n") else "\n\n")
    header = "[" + ".".join(key(p) for p in path) + "]"
    return text + sep + header + "\n" + line + "\n"


def _trailing_comment(text: str, span: tuple[int, int]) -> str:
    segment = text[span[0]:span[1]].rstrip("\n")
    m = _KEY_LINE.match(segment)
    if not m:
        return ""
    end = value_end(segment, m.end())
    rest = segment[end:]
    return rest if rest.strip().startswith("#") else ""


def _indent_of(lines: Sequence[str], start: int, end: int) -> str:
    for i in range(start, min(end, len(lines))):
        if _KEY_LINE.match(lines[i]):
            return lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    return ""


def remove_key(text: str, path: tuple[str, ...], name: str, drop_empty_table: bool = True) -> str:
    """`text` without the key's line(s); a table left with nothing but blank lines loses its
    header too (with the blank line before it), so install-then-uninstall gives back the file."""
    span = key_span(text, path, name)
    if span is None:
        return text
    text = text[: span[0]] + text[span[1]:]
    if not drop_empty_table or path == ():
        return text
    lines = text.splitlines(keepends=True)
    rng = table_range(lines, path)
    if rng is None:
        return text
    body = lines[rng[0] + 1: rng[1]]
    if any(line.strip() for line in body):
        return text
    start = rng[0]
    if start > 0 and not lines[start - 1].strip():
        start -= 1
    return "".join(lines[:start] + lines[rng[1]:])


def array_items(text: str, span_start: int) -> tuple[int, int]:
    """(index of '[', index of the matching ']') of the array value on the key line at span_start."""
    m = _KEY_LINE.match(text[span_start:])
    if not m:
        raise TomlError("not a key line")
    i = span_start + m.end()
    while text[i] in " \t":
        i += 1
    if text[i] != "[":
        raise TomlError("not an array")
    end = value_end(text, i)
    return i, end - 1


def append_to_array(text: str, path: tuple[str, ...], name: str, item: str) -> str:
    """Add `item` (a string) to the array `name` in table `path`, keeping its comments."""
    span = key_span(text, path, name)
    if span is None:
        raise TomlError(f"no key {name}")
    open_, close = array_items(text, span[0])
    inner = text[open_ + 1: close]
    # the last significant character before ']', skipping spaces and comments
    significant = _strip_comments(inner).rstrip()
    rendered = value(item)
    if not significant:
        return text[: open_ + 1] + rendered + text[open_ + 1:]
    # position just after the last significant char in the original text
    last = open_ + 1 + _index_after_significant(inner)
    if significant.endswith(","):  # keep the trailing-comma style: `"a", "new",`
        return text[:last] + " " + rendered + "," + text[last:]
    return text[:last] + ", " + rendered + text[last:]


def remove_from_array(text: str, path: tuple[str, ...], name: str, item: str, drop_if_empty: bool = True) -> str:
    """Remove the string `item` from the array `name`; the whole key goes when the array is
    left empty (an empty list means the same as none)."""
    span = key_span(text, path, name)
    if span is None:
        return text
    open_, close = array_items(text, span[0])
    i = open_ + 1
    while i < close:
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            continue
        if c in "\"'":
            end = _string_end(text, i)
            try:
                literal = tomllib.loads("x = " + text[i:end])["x"]
            except tomllib.TOMLDecodeError:
                literal = None
            if literal == item:
                # take the comma after it, or else the one before it
                k = end
                while k < close and text[k] in " \t":
                    k += 1
                if k < close and text[k] == ",":
                    k += 1
                    b = i
                    while b > open_ + 1 and text[b - 1] in " \t":
                        b -= 1
                    if b == open_ + 1:  # first item: take the spaces after its comma instead
                        b = i
                        while k < close and text[k] in " \t":
                            k += 1
                    text = text[:b] + text[k:]
                else:
                    b = i
                    while b > open_ + 1 and text[b - 1] in " \t\n":
                        b -= 1
                    if b > open_ + 1 and text[b - 1] == ",":
                        b -= 1
                    text = text[:b] + text[end:]
                break
            i = end
            continue
        i += 1
    if drop_if_empty:
        data = tomllib.loads(text)
        node = data
        for p in path:
            node = node.get(p, {})
        if node.get(name) == []:
            span = key_span(text, path, name)
            text = text[: span[0]] + text[span[1]:]
    return text


def _strip_comments(inner: str) -> str:
    out, i = [], 0
    while i < len(inner):
        c = inner[i]
        if c in "\"'":
            end = _string_end(inner, i)
            out.append(inner[i:end])
            i = end
            continue
        if c == "#":
            nl = inner.find("\n", i)
            i = len(inner) if nl < 0 else nl
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _index_after_significant(inner: str) -> int:
    last, i = 0, 0
    while i < len(inner):
        c = inner[i]
        if c in "\"'":
            end = _string_end(inner, i)
            last = end
            i = end
            continue
        if c == "#":
            nl = inner.find("\n", i)
            i = len(inner) if nl < 0 else nl
            continue
        if not c.isspace():
            last = i + 1
        i += 1
    return last
