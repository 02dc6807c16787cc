"""The failpoint spec the fault tests arm maild with (MAILD_FAILPOINT)."""

from __future__ import annotations

import pytest

from maild.service.failpoints import parse


def test_a_point_is_armed_for_its_first_or_nth_hit() -> None:
    """`NAME` kills at the first hit, `NAME@N` at the N-th; several points
    are comma-separated; an empty spec arms nothing."""
    assert parse("release@50, after-data") == {"release": 50, "after-data": 1}
    assert parse("") == {}


@pytest.mark.parametrize("spec", ["release@0", "release@x", "@3", "release@"])
def test_a_bad_spec_is_refused_naming_the_variable(spec: str) -> None:
    """A spec that is not NAME or NAME@N (N >= 1) is an error naming
    MAILD_FAILPOINT and the bad item, never a point silently left unarmed."""
    with pytest.raises(ValueError, match=r"MAILD_FAILPOINT: .* is not NAME or NAME@N"):
        parse(spec)
