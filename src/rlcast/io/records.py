"""The record of an output: the rlcast command that wrote it and the settings its content depends on
(`output_record`), kept as the MARKER file of a folder, the first key (RECORD) of a result JSON or a stamp (STAMP) in
an HTML or PNG file, and read back by `read_record`; `json_safe` is the JSON form every record and JSON output takes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MARKER = ".rlcast-output"  # in every output folder rlcast writes: its record, {"command": ..., "settings": ...}
RECORD = "rlcast"  # the key of the record in a result JSON (its first key)
STAMP = "rlcast-output"  # the record follows this word in other output files (an HTML comment, a PNG text chunk)


def json_safe(obj):
    """A JSON-safe copy: nan/inf floats become None (JSON has no nan), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def output_record(command: str | None, settings: dict | None = None) -> dict:
    """What an output says about itself: the rlcast command that wrote it and the settings its content depends on
    (as JSON gives them back, so that a saved record compares equal to a new one)."""
    return {"command": command, "settings": json.loads(json.dumps(json_safe(settings or {}), sort_keys=True))}


def html_record(record: dict) -> str:
    """The record as an HTML comment, for an HTML output ("--" escaped: it would end the comment)."""
    return f"<!-- {STAMP} " + json.dumps(record).replace("--", "-\\u002d") + " -->"


def read_record(path: Path) -> dict | None:
    """The record of an output rlcast wrote (a folder's MARKER, a JSON's RECORD key, a stamp), else None."""
    path = Path(path)
    try:
        if path.is_dir():
            record = json.loads((path / MARKER).read_text())
        elif path.suffix == ".json":
            record = json.loads(path.read_text()).get(RECORD)
        else:
            with path.open("rb") as f:
                head = f.read(1 << 16)
            at = head.find(STAMP.encode())
            if at < 0:
                return None
            record, _ = json.JSONDecoder().raw_decode(head[at + len(STAMP) + 1:].decode("latin-1"))
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and "command" in record else None
