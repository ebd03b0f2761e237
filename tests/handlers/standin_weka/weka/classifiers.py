"""weka.classifiers (stand-in): a nearest-centroid ``Classifier`` under any Weka class name."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .core import jvm
from .core.dataset import Instances


class Classifier:
    def __init__(self, classname: str, options: list[str] | None = None) -> None:
        jvm.require()
        if not classname.startswith("weka.classifiers."):
            raise ValueError(f"Class not found: {classname}")  # as Weka's ClassNotFoundException says
        self.classname, self.options = classname, list(options or [])
        self.centroids: dict[int, list[float]] = {}

    def build_classifier(self, data: Instances) -> None:
        if data.class_index < 0:
            raise ValueError("Class index is negative (not set)!")
        sums: dict[int, list[float]] = {}
        counts: dict[int, int] = {}
        for row in data:
            label = int(row.values[data.class_index])
            features = [0.0 if math.isnan(v) else v for v in row.values[:data.class_index]]
            acc = sums.setdefault(label, [0.0] * len(features))
            sums[label] = [a + f for a, f in zip(acc, features, strict=True)]
            counts[label] = counts.get(label, 0) + 1
        self.centroids = {label: [v / counts[label] for v in acc] for label, acc in sums.items()}

    def serialize(self, path: str, header: Instances | None = None) -> None:
        names = [a.name for a in header.attributes[:-1]] if header is not None else []
        Path(path).write_text(json.dumps({"classname": self.classname, "attributes": names,
                                          "centroids": self.centroids}))
