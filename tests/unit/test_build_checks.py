"""build's checks made before anything is written: metadata that would already be expired, and the
carry interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tuf.api.metadata import Root

from chiron.core.spec import load_spec_bytes
from chiron.engines.build import check_validity
from chiron.errors import UsageError

SPEC = b"""
[appliance]
name = "demo"
version = "1.0.0"

[python]
requirements = ["alpha"]

[[environments]]
name = "cp311"
python_version = "3.11"
platforms = ["manylinux_2_17_x86_64"]

[trust]
root = "root"
carry_interval = "%(carry)s"

[trust.roles.targets]
keys = ["file2:t.pem"]
expires = "30d"

[trust.roles.snapshot]
keys = ["file2:s.pem"]
expires = "7d"

[trust.roles.timestamp]
keys = ["file2:ts.pem"]
expires = "1d"
"""

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def _spec(carry: str = "12h"):  # type: ignore[no-untyped-def]
    return load_spec_bytes(SPEC % {b"carry": carry.encode()}, "spec.toml").spec


def _root(days: int = 365) -> Root:
    return Root(expires=NOW + timedelta(days=days))


def test_a_fresh_build_passes_without_warnings() -> None:
    assert check_validity(_spec(), _root(), NOW, NOW) == []


@pytest.mark.parametrize(
    ("age", "others"),
    [
        (timedelta(days=1), ""),
        (timedelta(days=8), " (snapshot too)"),
        (timedelta(days=31), " (snapshot and targets too)"),
    ],
)
def test_metadata_that_would_already_be_expired_is_refused(age: timedelta, others: str) -> None:
    """The role that expires first is named (a host refuses it first), with its expiry and the build time."""
    built = NOW - age
    with pytest.raises(UsageError) as exc:
        check_validity(_spec(), _root(), built, NOW)
    expires = (built + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert exc.value.message == (
        f"role timestamp: metadata built at {built:%Y-%m-%dT%H:%M:%SZ} with expires = 1d would expire at "
        f"{expires}, before now (2026-11-30T12:00:00Z){others}: every host would refuse it"
    )
    assert check_validity(_spec(), _root(), NOW - age, NOW, allow_expired=True) == []  # a drill


def test_an_expired_root_is_refused() -> None:
    with pytest.raises(UsageError, match="role root: root version 1 expired at 2026-11-29"):
        check_validity(_spec(), _root(-1), NOW, NOW)


def test_the_carry_interval_warns_about_each_role_that_cannot_last_it() -> None:
    warnings = check_validity(_spec("14d"), _root(10), NOW, NOW)
    assert [w.split(" ", 1)[0] for w in warnings] == [
        "trust.roles.snapshot.expires",
        "trust.roles.timestamp.expires",
        "root",
    ]
    assert "(7d) is shorter than trust.carry_interval (14d)" in warnings[0]
    assert warnings[2].startswith("root version 1 expires at 2026-12-10T12:00:00Z, within trust.carry_interval")


def test_the_carry_interval_is_a_duration() -> None:
    from chiron.errors import SpecError

    with pytest.raises(SpecError, match=r"trust\.carry_interval: '2 weeks' is not a duration"):
        _spec("2 weeks")


@pytest.mark.parametrize(
    ("spec_version", "expect"), [("1.0.0", "1.0.0+{n}"), ("2.1rc1", "2.1rc1+{n}"), ("1.0+site", "1.0+site.{n}")]
)
def test_a_release_version_tells_releases_apart_and_sorts_by_n(spec_version: str, expect: str) -> None:
    """docs/mirror.md#versions: SPEC+N, increasing with N, above the spec's own version."""
    from packaging.version import Version

    from chiron.engines.mirror import release_version

    first, second = release_version(spec_version, 1795485861), release_version(spec_version, 1795485862)
    assert first == expect.format(n=1795485861)
    assert Version(spec_version) < Version(first) < Version(second)
