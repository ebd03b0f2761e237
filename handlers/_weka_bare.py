"""Train and predict with a Weka classifier on spectra: what the stock Weka templates run.

A port of the UFDL job launcher's ``spectra/weka/bare.py`` (``ufdl-job-launcher-plugins``),
run by :mod:`handlers.weka_spectra` in a Python that has python-weka-wrapper3 (and a Java runtime):
the same command line, the same model files, the same predictions::

  python _weka_bare.py train DATA_DIR OUTPUT_DIR CLASSNAME OPTIONS
      DATA_DIR/<label>/<name>.spec (to-subdir-sc) -> OUTPUT_DIR/model (the serialised
      classifier and its header) and OUTPUT_DIR/labels (one label a line)
  python _weka_bare.py predict MODEL_DIR INPUT_DIR OUTPUT_DIR
      INPUT_DIR/**/<name>.spec -> OUTPUT_DIR/<name>.txt (the predicted label)

Each spectrum becomes one instance: a numeric attribute per wave number (every wave number
of the spectra, ascending; missing where a spectrum lacks it) and a nominal ``label``. The
``.spec`` files are ADAMS spectra (``#`` report lines, ``waveno,amplitude``, ``---`` between
spectra), read here without wai.common. It is not imported by the node (its name starts
with ``_``); it needs nothing of ufdl-node. Without python-weka-wrapper3 it says so on one
line and exits 2.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

Spectrum = dict[float, float]


def read_spectra(path: Path) -> list[Spectrum]:
    """The spectra of a ``.spec`` file, each {wave number: amplitude}."""
    spectra: list[Spectrum] = []
    points: Spectrum = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line == "---":
            spectra.append(points)
            points = {}
        elif line and not line.startswith("#") and line != "waveno,amplitude":
            wave, amplitude = line.split(",")[:2]
            points[float(wave)] = float(amplitude)
    spectra.append(points)
    return spectra


def _spec_files(directory: str) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*.spec") if p.is_file())


def _dataset(wave_numbers: list[float], labels: list[str], capacity: int):  # type: ignore[no-untyped-def]
    from weka.core.dataset import Attribute, Instances

    attributes = [Attribute.create_numeric(str(w)) for w in wave_numbers]
    attributes.append(Attribute.create_nominal("label", labels))
    dataset = Instances.create_instances("spectra", attributes, capacity)
    dataset.class_index = len(wave_numbers)
    return dataset


def _instance(wave_numbers: list[float], spectrum: Spectrum, label_index: int | None):  # type: ignore[no-untyped-def]
    from weka.core.dataset import Instance

    missing = Instance.missing_value()
    values = [spectrum.get(w, missing) for w in wave_numbers]
    values.append(float(label_index) if label_index is not None else missing)
    return Instance.create_instance(values)


def train(data_dir: str, output_dir: str, classname: str, options: str) -> None:
    from weka.classifiers import Classifier

    # the last spectrum of a file wins, as the stock dict comprehension has it
    by_name = {p.name: (read_spectra(p)[-1], p.parent.name) for p in _spec_files(data_dir)}
    if not by_name:
        raise SystemExit(f"no .spec files under {data_dir}")
    wave_numbers = sorted({w for spectrum, _ in by_name.values() for w in spectrum})
    labels = sorted({label for _, label in by_name.values()})
    dataset = _dataset(wave_numbers, labels, len(by_name))
    for spectrum, label in by_name.values():
        dataset.add_instance(_instance(wave_numbers, spectrum, labels.index(label)))
    classifier = Classifier(classname=classname, options=shlex.split(options))
    classifier.build_classifier(dataset)
    classifier.serialize(output_dir + "/model", dataset)
    Path(output_dir, "labels").write_text("\n".join(labels), encoding="utf-8")
    print(f"trained {classname} on {len(by_name)} spectra, {len(labels)} labels", flush=True)


def predict(model_dir: str, input_dir: str, output_dir: str) -> None:
    from weka.filters import Filter

    labels = Path(model_dir, "labels").read_text(encoding="utf-8").splitlines()
    classifier = Filter(classname="weka.filters.supervised.attribute.AddClassification",
                        options=["-serialized", model_dir + "/model", "-classification", "-remove-old-class"])
    by_name = {p.name: read_spectra(p)[-1] for p in _spec_files(input_dir)}
    wave_numbers = sorted({w for spectrum in by_name.values() for w in spectrum})
    dataset = _dataset(wave_numbers, labels, len(by_name))
    for spectrum in by_name.values():
        dataset.add_instance(_instance(wave_numbers, spectrum, None))
    classifier.inputformat(dataset)
    classified = classifier.filter(dataset)
    for name, instance in zip(by_name, classified, strict=True):
        index = instance.get_value(instance.class_index)
        if not math.isnan(index):
            Path(output_dir, name.replace(".spec", ".txt")).write_text(labels[round(index)], encoding="utf-8")
    print(f"predicted {len(by_name)} spectra", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="method", required=True)
    for name, args in (("train", ("data_dir", "output_dir", "classname", "options")),
                       ("predict", ("model_dir", "input_dir", "output_dir"))):
        command = sub.add_parser(name)
        for arg in args:
            command.add_argument(arg)
    ns = parser.parse_args(argv)
    here = Path(__file__).resolve().parent  # the handler files there must not shadow packages
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        import weka.core.jvm as jvm
    except ImportError:
        print(f"{sys.executable} has no python-weka-wrapper3 (pip install python-weka-wrapper3; "
              "Weka needs a Java runtime too)", file=sys.stderr)
        return 2
    jvm.start()
    try:
        if ns.method == "train":
            train(ns.data_dir, ns.output_dir, ns.classname, ns.options)
        else:
            predict(ns.model_dir, ns.input_dir, ns.output_dir)
    finally:
        jvm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
