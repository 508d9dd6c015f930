"""A lock is input (python.lock, a store's locks/N.pylock.toml): whatever it holds gives a LockError
naming the file and the field, never a traceback."""

from __future__ import annotations

import pytest

from chiron.core.models import TargetEnvironment
from chiron.errors import LockError
from chiron.sources.lock import parse_pylock

ENVS = [TargetEnvironment(name="cp311", python_version="3.11", platforms=["manylinux_2_17_x86_64"])]
SHA = "ab" * 32
WHEEL = f'{{ name = "alpha-1.0-py3-none-any.whl", url = "http://i/alpha-1.0-py3-none-any.whl", hashes = {{ sha256 = "{SHA}" }} }}'
HEAD = 'lock-version = "1.0"\ncreated-by = "chiron"\n'

CASES = [
    ("packages = 5", "packages: is not an array of tables"),
    ("packages = [1]", "packages[0]: is not a table"),
    ('[[packages]]\nversion = "1.0"', "packages[0]: name: missing"),
    ('[[packages]]\nname = 7\nversion = "1.0"', "packages[0]: name: is not a string"),
    ('[[packages]]\nname = "alpha"\nversion = "1.0"\nwheels = "x"', "packages[0]: wheels: is not an array"),
    ('[[packages]]\nname = "alpha"\nversion = "1.0"\nwheels = [1]', "packages[0].wheels[0]: is not a table"),
    ('[[packages]]\nname = "alpha"\nversion = "1.0"\nmarker = 3', "packages[0]: marker: is not a string"),
    (
        f'[[packages]]\nname = "alpha"\nversion = "1.0"\nwheels = [{{ url = 5, hashes = {{ sha256 = "{SHA}" }} }}]',
        "packages[0].wheels[0]: url: is not a string",
    ),
    (
        '[[packages]]\nname = "alpha"\nversion = "1.0"\nwheels = [{ url = "http://i/a.whl", hashes = "x" }]',
        "needs hashes.sha256",
    ),
    (
        f'[[packages]]\nname = "alpha"\nversion = "1.0"\nwheels = [{WHEEL[:-2]}, size = -1 }}]',
        "size: is not a non-negative integer",
    ),
    ("deep = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
]


@pytest.mark.parametrize(("body", "expect"), CASES, ids=[c[1] for c in CASES])
def test_a_hostile_lock_is_a_one_line_error(body: str, expect: str) -> None:
    with pytest.raises(LockError) as exc:
        parse_pylock(HEAD + body + "\n", ENVS, allow_sdists=False, where="pylock.toml")
    assert exc.value.message.startswith("pylock.toml") and expect in exc.value.message
    assert "\n" not in exc.value.diagnostics()


def test_a_good_lock_still_reads() -> None:
    lock = parse_pylock(
        HEAD + f'[[packages]]\nname = "alpha"\nversion = "1.0"\nwheels = [{WHEEL}]\n',
        ENVS,
        allow_sdists=False,
        where="pylock.toml",
    )
    assert [a.filename for a in lock.artifacts()] == ["alpha-1.0-py3-none-any.whl"]
