"""Progress from a training program's epoch lines, for ``ctx.run`` and ``ctx.container``.

A plain ``progress_regex`` gives ``step``/``total`` (or ``percent``, ``progress``) of the
whole job. A trainer prints where it is inside an epoch instead: mmcv's ``Epoch [3][10/25]``
(1-based epoch, no count of epochs: that is a job parameter), YOLOv5's tqdm line
``      2/19   ...  8/25 [00:01<...`` (0-based epoch of the last epoch's index). An
:class:`EpochProgress` turns such a line into the job's share done,
``(epochs done + step/total) / epochs``, with these named groups:

- ``epoch`` (1-based) or ``epoch0`` (0-based): the epoch running;
- ``epochs`` (their count) or ``last_epoch`` (the last one's 0-based index), else the
  count given (a job parameter, e.g. ``epochs``);
- ``step`` and ``total`` (optional): where the epoch is; without them an epoch line counts
  its epoch as begun, or with a ``done`` group that matched (mmcv's ``Epoch(val) [3][5]``,
  printed once an epoch is through) as done.

It has the ``search`` of a compiled pattern, and its match the ``groupdict`` the progress
parser reads (``progress`` and ``epoch``), so both paths take it where they take a regex.
"""

from __future__ import annotations

import re
from typing import Any


class _Match:
    def __init__(self, groups: dict[str, str]) -> None:
        self._groups = groups

    def groupdict(self) -> dict[str, str]:
        return dict(self._groups)


class EpochProgress:
    """A progress pattern over epochs (see the module's docstring)."""

    def __init__(self, regex: str | re.Pattern[str], epochs: int | None = None) -> None:
        self.pattern = re.compile(regex) if isinstance(regex, str) else regex
        groups = set(self.pattern.groupindex)
        if not {"epoch", "epoch0"} & groups:
            raise ValueError("an epoch progress regex needs a group named epoch or epoch0")
        if epochs is None and not {"epochs", "last_epoch"} & groups:
            raise ValueError("an epoch progress regex without epochs or last_epoch needs the "
                             "number of epochs")
        self.epochs = epochs

    def search(self, line: str) -> _Match | None:
        match = self.pattern.search(line)
        if match is None:
            return None
        try:
            return self._share(match.groupdict())
        except (TypeError, ValueError):
            return None

    def _share(self, found: dict[str, Any]) -> _Match | None:
        epoch = int(found["epoch"]) - 1 if found.get("epoch") is not None else int(found["epoch0"])
        if found.get("epochs") is not None:
            epochs = int(found["epochs"])
        elif found.get("last_epoch") is not None:
            epochs = int(found["last_epoch"]) + 1
        else:
            epochs = int(self.epochs or 0)
        if epochs <= 0 or epoch < 0:
            return None
        within = 1.0 if found.get("done") else 0.0
        if found.get("step") is not None and found.get("total") is not None and float(found["total"]) > 0:
            within = min(1.0, float(found["step"]) / float(found["total"]))
        share = min(1.0, (min(epoch, epochs - 1) + within) / epochs)
        return _Match({"progress": f"{share:.6f}", "epoch": str(epoch + 1)})
