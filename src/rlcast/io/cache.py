"""The one cache root of rlcast: `$RLCAST_CACHE`, else `~/.cache/rlcast`.

Under it: the testbed base models (`testbed-<fingerprint>`), the spectra of runs whose folder is read-only
(`<hash of the run's paths>`; a writable run keeps its own under RUN/.rlcast-cache) and `rlcast analyze --example`'s
planted run (`example-run`). Everything there can be deleted; it is rebuilt on the next use.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "RLCAST_CACHE"


def cache_root() -> Path:
    """$RLCAST_CACHE (`~` expanded) when set and not empty, else ~/.cache/rlcast; read at each call, so a test or a
    process may point it elsewhere."""
    value = os.environ.get(ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "rlcast"
