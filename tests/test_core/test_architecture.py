import numpy as np
import pytest

from nasframe import Architecture, Boolean, Categorical, Integer
from nasframe.testing import ToySpace


def test_equal_archs_share_id_and_hash_regardless_of_order():
    a = Architecture({"b": 2, "a": [1, 2]})
    b = Architecture(a=(1, 2), b=2)
    assert a == b and hash(a) == hash(b) and a.id == b.id
    assert a.to_json() == '{"a":[1,2],"b":2}'
    assert Architecture.from_json(a.to_json()) == a


def test_id_is_stable_across_processes():
    # a fixed expectation: the id is a hash of the canonical JSON, not of Python's hash()
    import hashlib

    assert Architecture({"x": 1}).id == hashlib.sha256(b'{"x":1}').hexdigest()[:12]


def test_architecture_is_immutable():
    a = Architecture({"x": 1})
    with pytest.raises(TypeError):
        a["x"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        a.foo = 1
    assert a.replace(x=2)["x"] == 2 and a["x"] == 1


def test_rejects_unsupported_values():
    with pytest.raises(TypeError):
        Architecture({"x": {"nested": 1}})
    with pytest.raises(TypeError):
        Architecture({"x": None})


def test_numpy_scalars_are_normalised():
    assert Architecture({"x": np.int64(3)}) == Architecture({"x": 3})


def test_decisions_encode_and_reject():
    c = Categorical("k", (3, 5, 7))
    assert c.encode(5) == [0.0, 1.0, 0.0] and c.decode([0.1, 0.2, 0.9]) == 7
    with pytest.raises(ValueError, match="'k'"):
        c.encode(4)
    with pytest.raises(ValueError, match="twice"):
        Categorical("k", (3, 3))
    i = Integer("n", 0, 4)
    assert i.decode(i.encode(3)) == 3 and i.decode([0.375]) == 2 and i.decode([0.625]) == 3
    assert not i.contains(True) and Boolean("b").contains(True) and not Boolean("b").contains(1)


def test_integer_matches_its_value_list_and_scales():
    """The O(1) Integer methods agree with its explicit list of values."""
    d = Integer("n", -3, 11, step=2)
    vals = d.values()
    assert d.count == len(vals) == 8
    for v in range(-6, 15):
        assert d.contains(v) == (v in vals)
        assert d.contains(float(v)) == (v in vals)
    assert not d.contains(1.5) and not d.contains("1") and not d.contains(None)
    for i, v in enumerate(vals):
        assert d.index(v) == i and d.value_at(i) == v
        assert d.encode(v) == [i / (len(vals) - 1)]
    for x in np.linspace(-0.2, 1.2, 29):
        assert d.decode([x]) == vals[min(max(int(np.floor(x * 7 + 0.5)), 0), 7)]
    # a seeded draw is a uniform index into the value list
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [d.sample(a) for _ in range(50)] == [vals[int(b.integers(len(vals)))] for _ in range(50)]
    with pytest.raises(ValueError, match=r"'n': 4 is not in -3..11 \(step 2\)"):
        d.index(4)
    # a billion values costs nothing to describe, validate or count
    big = Integer("x", 0, 10**9)
    assert big.count == 10**9 + 1 and big.contains(10**9) and not big.contains(10**9 + 1)
    assert big.describe() == "x: 0..1000000000"


def test_space_validate_encode_enumerate():
    space = ToySpace()
    archs = list(space.enumerate())
    assert len(archs) == space.size == 3 * 3 * 2
    for a in archs:
        assert space.decode(space.encode(a)) == a
    assert "'width' = 5 is not allowed" in space.validate(archs[0].replace(width=5))
    assert "missing" in space.validate(Architecture({"width": 2}))
