import pytest

from probes.errors import StrataError
from probes.phases import adjacent_pairs, default_phases, parse_phases


def test_builtin_qwen3_maps():
    p4 = default_phases(36)
    assert p4["C"] == list(range(10, 24)) and p4["tail"] == [34, 35] and "E" not in p4
    p32 = default_phases(64)
    assert p32["E"] == list(range(47, 59)) and p32["A"] == list(range(7))


def test_fractional_map_covers_every_layer_once():
    for n in (8, 24, 30, 48):
        p = default_phases(n)
        layers = sorted(x for v in p.values() for x in v)
        assert layers == list(range(n))
    p = default_phases(30)
    # L/30: A < .11 → 0..3, B < .15 → 4, C < .5 → 5..14, D < .75 → 15..22, E < .92 → 23..27
    assert p["A"] == [0, 1, 2, 3] and p["B"] == [4] and p["C"] == list(range(5, 15))
    assert p["E"] == list(range(23, 28)) and p["tail"] == [28, 29]


def test_parse_and_pairs():
    p = parse_phases("A:0-2, B:3-5,C:6-7", 8)
    assert p == {"A": [0, 1, 2], "B": [3, 4, 5], "C": [6, 7]}
    assert adjacent_pairs(p, "B") == [3, 4]


def test_parse_from_file(tmp_path):
    f = tmp_path / "map.txt"
    f.write_text("A:0-3\nB:4-7\n")
    assert parse_phases(str(f), 8)["B"] == [4, 5, 6, 7]


@pytest.mark.parametrize("text,msg", [
    ("A:0-3,B:3-7", "in both"),
    ("A:0-3,B:5-7", "in no phase"),
    ("A:0-9", "has 8 layers"),
    ("A:zero-3", "cannot read"),
    ("A:0-7,", None),
])
def test_bad_phase_maps(text, msg):
    if msg is None:
        assert parse_phases(text, 8) == {"A": list(range(8))}
        return
    with pytest.raises(StrataError, match=msg) as e:
        parse_phases(text, 8)
    assert "\n" not in str(e.value)
