"""Fixtures for ds-launch's tests (helpers live in _launch_util.py)."""

from _launch_util import launch_env  # noqa: F401  (fixture)
