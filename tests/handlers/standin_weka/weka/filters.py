"""weka.filters (stand-in): ``AddClassification`` with ``-serialized MODEL`` (a stand-in model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .core import jvm
from .core.dataset import Instance, Instances


class Filter:
    def __init__(self, classname: str, options: list[str] | None = None) -> None:
        jvm.require()
        if classname != "weka.filters.supervised.attribute.AddClassification":
            raise ValueError(f"Class not found: {classname}")
        options = list(options or [])
        model = Path(options[options.index("-serialized") + 1])
        if not model.is_file():
            raise FileNotFoundError(f"Serialized model file {model} does not exist")
        saved = json.loads(model.read_text())
        self.attributes: list[str] = saved["attributes"]
        self.centroids = {int(k): v for k, v in saved["centroids"].items()}
        self.header: Instances | None = None

    def inputformat(self, data: Instances) -> None:
        self.header = data

    def filter(self, data: Instances) -> list[Instance]:
        if self.header is None:
            raise RuntimeError("No input instance format defined")
        position = {a.name: i for i, a in enumerate(data.attributes[:data.class_index])}
        out = []
        for row in data:
            features = [row.values[position[name]] if name in position else 0.0 for name in self.attributes]
            features = [0.0 if math.isnan(v) else v for v in features]
            best = min(self.centroids, key=lambda label: sum(
                (f - c) ** 2 for f, c in zip(features, self.centroids[label], strict=True)))
            result = Instance([*row.values[:data.class_index], float(best)])
            result.class_index = data.class_index
            out.append(result)
        return out
