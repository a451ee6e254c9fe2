"""@record: the dataclass subset used on the container start path."""

import pytest

from flexai_hook.record import asdict, fields, record, replace


@record
class Point:
    x: int
    y: int = 0
    tags: dict = {}


def test_construction_defaults_and_fields():
    assert fields(Point) == ("x", "y", "tags")
    assert asdict(Point(1)) == {"x": 1, "y": 0, "tags": {}}
    assert Point(1, 2) == Point(x=1, y=2)
    assert Point(1) != Point(2) and Point(1) != (1, 0, {})
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags={})"


def test_mutable_defaults_are_not_shared():
    a, b = Point(1), Point(2)
    a.tags["k"] = 1
    assert b.tags == {}


def test_immutable_and_replace():
    p = Point(1)
    with pytest.raises(AttributeError):
        p.x = 5
    with pytest.raises(AttributeError):
        del p.x
    assert replace(p, y=3) == Point(1, 3) and p.y == 0


def test_hashable_and_errors():
    assert len({Point(1), Point(1), Point(2)}) == 2
    with pytest.raises(TypeError, match="missing field 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected field 'z'"):
        Point(1, z=2)
    with pytest.raises(TypeError, match="twice"):
        Point(1, x=2)
    with pytest.raises(TypeError):
        Point(1, 2, {}, 4)


def test_keyword_construction_is_the_same_record_as_positional():
    """Keywords only take a shorter path (flexaid builds records per request): same values,
    same field order, the same fresh copy of a mutable default, the same errors."""
    a, b = Point(x=1), Point(1)
    assert a == b and vars(a) == vars(b) and list(vars(a)) == ["x", "y", "tags"]
    assert Point(tags={"k": 1}, x=1).tags == {"k": 1} and list(vars(Point(tags={}, y=2, x=1))) == ["x", "y", "tags"]
    assert list(asdict(Point(tags={}, y=2, x=1)).items()) == [("x", 1), ("y", 2), ("tags", {})]
    a.tags["k"] = 1
    assert Point(x=2).tags == {}
    with pytest.raises(TypeError, match="missing field 'x'"):
        Point(y=1)
    with pytest.raises(TypeError, match="unexpected field 'z'"):
        Point(x=1, z=2)
