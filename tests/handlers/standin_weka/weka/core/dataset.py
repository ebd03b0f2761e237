"""weka.core.dataset (stand-in): attributes, instances and datasets as the script uses them."""

from __future__ import annotations

import math
from collections.abc import Iterator

from . import jvm


class Attribute:
    def __init__(self, name: str, values: list[str] | None) -> None:
        self.name, self.values = name, values

    @classmethod
    def create_numeric(cls, name: str) -> Attribute:
        jvm.require()
        return cls(name, None)

    @classmethod
    def create_nominal(cls, name: str, labels: list[str]) -> Attribute:
        jvm.require()
        if len(set(labels)) != len(labels):
            raise ValueError(f"nominal attribute {name!r}: duplicate values")
        return cls(name, list(labels))


class Instance:
    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.class_index = len(values) - 1

    @staticmethod
    def missing_value() -> float:
        return math.nan

    @classmethod
    def create_instance(cls, values: list[float]) -> Instance:
        jvm.require()
        return cls(values)

    def get_value(self, index: int) -> float:
        return self.values[index]


class Instances:
    def __init__(self, name: str, attributes: list[Attribute]) -> None:
        self.name, self.attributes = name, attributes
        self.rows: list[Instance] = []
        self.class_index = -1

    @classmethod
    def create_instances(cls, name: str, attributes: list[Attribute], capacity: int) -> Instances:
        jvm.require()
        return cls(name, attributes)

    def add_instance(self, instance: Instance) -> None:
        if len(instance.values) != len(self.attributes):
            raise ValueError(f"instance of {len(instance.values)} values for {len(self.attributes)} "
                             "attributes")
        instance.class_index = self.class_index
        self.rows.append(instance)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.rows)
