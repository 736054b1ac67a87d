"""lrm's cache of things it trains once and reuses: $LRM_CACHE (default ~/.cache/lrm).

    cache_root() / "teachers" / name      # embedded-default teachers (lrm.generators.embedded)
    cache_root() / "codecs" / name        # lrm's own autoencoder (lrm.codecs.pae)

Folder names end in `settings_digest(settings)`, so that changing a setting makes a new entry instead of
reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_ENV = "LRM_CACHE"


def cache_root() -> Path:
    """$LRM_CACHE, else ~/.cache/lrm."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/lrm").expanduser()


def settings_digest(settings: dict) -> str:
    """8 hex of the SHA-256 of `settings` as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
