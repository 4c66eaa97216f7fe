"""The lock files are current with pyproject.toml, hashed, and agree with each other. Offline: reads files only."""
from __future__ import annotations

import re

from tests.packaging.deps import LOCK_ALL, LOCK_GATEWAY, PYPROJECT, every_extra, lock_entries, lock_pins, stale


def test_all_lock_is_current_with_every_part_of_pyproject() -> None:
    assert stale(PYPROJECT, LOCK_ALL, every_extra()) == [], "run `make lock` and commit requirements/"


def test_gateway_lock_is_current_with_the_gateway_part() -> None:
    assert stale(PYPROJECT, LOCK_GATEWAY, {"gateway"}) == [], "run `make lock` and commit requirements/"


def test_a_changed_pin_an_added_and_a_dropped_requirement_read_as_stale(tmp_path) -> None:
    text = PYPROJECT.read_text()
    assert '"aiohttp==3.14.5",' in text and '"rich==15.0.0",' in text
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace('"aiohttp==3.14.5",', '"aiohttp==3.14.4",\n  "tenacity==9.1.2",')
                       .replace('"rich==15.0.0",', ""))
    problems = stale(changed, LOCK_ALL, every_extra(changed))
    assert "aiohttp: pyproject.toml pins 3.14.4, all.lock has 3.14.5" in problems
    assert "tenacity: in pyproject.toml, missing from all.lock" in problems
    assert "rich: all.lock holds it for pyproject.toml, which no longer asks for it" in problems


def test_every_locked_package_carries_a_sha256_hash() -> None:
    for lock in (LOCK_ALL, LOCK_GATEWAY):
        unhashed = [name for name, text in lock_entries(lock).items()
                    if not re.search(r"--hash=sha256:[0-9a-f]{64}", text)]
        assert unhashed == [], f"{lock.name}: no hash for {unhashed} (pip --require-hashes would refuse it)"


def test_uvloop_is_locked_for_posix_only() -> None:
    for lock in (LOCK_ALL, LOCK_GATEWAY):
        pin = lock_entries(lock)["uvloop"].splitlines()[0]
        assert "sys_platform != 'win32'" in pin, f"{lock.name}: {pin}"


def test_gateway_lock_pins_the_same_versions_as_the_full_lock() -> None:
    full = lock_pins(LOCK_ALL)
    differ = {name: (v, full.get(name)) for name, v in lock_pins(LOCK_GATEWAY).items() if full.get(name) != v}
    assert differ == {}, "gateway.lock and all.lock disagree (gateway, all): run `make lock`"


def test_the_locks_say_how_to_regenerate_them() -> None:
    for lock in (LOCK_ALL, LOCK_GATEWAY):
        assert "#    make lock" in lock.read_text().splitlines()[1], lock.name
