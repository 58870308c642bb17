"""Fixtures every test module may use.

`engine` is the installed package with its compiled engine: a missing engine is a failure, never a skip.
Tests run against the installed package (pytest's importlib mode keeps the checkout's source folder, which has
no compiled engine, off the import path); `support` (tests/support) is importable from every test.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    import pydarknet

    return pydarknet
