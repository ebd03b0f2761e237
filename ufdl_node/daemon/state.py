"""What a node remembers across restarts, in one small JSON file in its state directory.

- ``attempts``: how many times each job was handed back for a retry, so that a job
  that keeps asking for one ends ERRORED after ``max_attempts``, even across restarts.
- ``handbacks``: jobs this node is handing back to the pool (finish with error, then
  reset, then release). A job is written here before the finish and removed after
  the release, so a crash in between is finished by the next start.

Writes are atomic (a temporary file, then a rename): a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class NodeState:
    """The node's small persistent state (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # slots share one file; keep read-modify-write whole

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"attempts": {}, "handbacks": []}
        if not isinstance(data, dict):
            return {"attempts": {}, "handbacks": []}
        attempts = data.get("attempts")
        handbacks = data.get("handbacks")
        return {
            "attempts": {str(k): int(v) for k, v in attempts.items()} if isinstance(attempts, dict) else {},
            "handbacks": [int(pk) for pk in handbacks] if isinstance(handbacks, list) else [],
        }

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.path)

    # -- retries -----------------------------------------------------------------------

    def bump_attempts(self, pk: int) -> int:
        """Count one more hand-back of job `pk` for a retry; the count so far."""
        with self._lock:
            data = self._read()
            data["attempts"][str(pk)] = data["attempts"].get(str(pk), 0) + 1
            self._write(data)
            return int(data["attempts"][str(pk)])

    def clear_attempts(self, pk: int) -> None:
        with self._lock:
            data = self._read()
            if data["attempts"].pop(str(pk), None) is not None:
                self._write(data)

    # -- hand-backs in progress ------------------------------------------------------------

    def begin_handback(self, pk: int) -> None:
        with self._lock:
            data = self._read()
            if pk not in data["handbacks"]:
                data["handbacks"].append(pk)
                self._write(data)

    def end_handback(self, pk: int) -> None:
        with self._lock:
            data = self._read()
            if pk in data["handbacks"]:
                data["handbacks"].remove(pk)
                self._write(data)

    def pending_handbacks(self) -> list[int]:
        with self._lock:
            return list(self._read()["handbacks"])
