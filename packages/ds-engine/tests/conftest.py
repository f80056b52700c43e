"""Fixtures shared by ds-engine's own tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def config_log(caplog: pytest.LogCaptureFixture):
    """Records of the ``ds_engine`` logger (which may not propagate to the root logger), with the
    once-per-process memory of unknown-key warnings cleared, so an earlier test's config cannot hide them."""
    import logging

    from ds_engine.config import unknown

    unknown._WARNED.clear()
    log = logging.getLogger("ds_engine")
    log.addHandler(caplog.handler)
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        log.removeHandler(caplog.handler)
        log.setLevel(old)
