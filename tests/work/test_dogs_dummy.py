"""The stock dogs_dummy computations: the score a train job writes, the labels predict gives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.registry import load_module_file
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

dogs_dummy = load_module_file(SHIPPED_HANDLERS_DIR / "_dogs_dummy_model.py")  # beside its handler

TRUTH = {"d1.jpg": "dog", "d2.jpg": "dog", "d3.jpg": "dog", "d4.jpg": "dog",
         "c1.jpg": "cat", "c2.jpg": "cat", "c3.jpg": "cat", "c4.jpg": "cat"}


def test_train_scores_correct_labels_over_factor() -> None:
    """model = correctly labelled .jpg images / factor; accuracy = correctly labelled / images;
    other files do not count."""
    labels = {"d1.jpg": "dog", "d2.jpg": "cat", "c1.jpg": "cat", "notes.txt": "dog", "x.png": "dog"}
    result = dogs_dummy.train(labels, TRUTH, factor=4)
    assert (result.score, result.model, result.model_text()) == (2, 0.5, "0.5")
    assert result.accuracy == 2 / 3
    assert result.files["d2.jpg"] == {"label": "cat", "correct_label": "dog", "correct": False}


def test_train_model_is_capped_at_one() -> None:
    """More correct images than the factor still gives the model 1.0."""
    assert dogs_dummy.train(TRUTH, TRUTH, factor=3).model == 1.0


def test_train_without_a_labelled_image_fails_the_job() -> None:
    """No image to score: one line (the launcher divides by zero there)."""
    with pytest.raises(JobFailed, match=r"^no labelled images \(\.jpg\) to train on$"):
        dogs_dummy.train({"notes.txt": "dog"}, TRUTH, factor=3)


def test_train_metadata_has_the_current_plugins_shape() -> None:
    """metadata = {frontend, job: {executor, num_files, factor, score, files, accuracy, model}},
    keys in the plugin's order; accuracy is the share right, model the model."""
    result = dogs_dummy.train({"d1.jpg": "dog", "z.jpg": "dog"}, TRUTH, factor=1000)
    meta = result.metadata({"colour": "blue"})
    assert meta == {"frontend": {"colour": "blue"},
                    "job": {"executor": "train", "num_files": 2, "factor": 1000, "score": 1,
                            "files": {"d1.jpg": {"label": "dog", "correct_label": "dog", "correct": True},
                                      "z.jpg": {"label": "dog", "correct_label": None, "correct": False}},
                            "accuracy": 0.5, "model": 0.001}}
    assert list(meta["job"]) == ["executor", "num_files", "factor", "score", "files", "accuracy", "model"]


def test_train_refuses_a_factor_that_is_not_positive() -> None:
    """factor 0 fails the job instead of dividing by zero."""
    with pytest.raises(JobFailed, match="factor must be a positive integer"):
        dogs_dummy.train(TRUTH, TRUTH, factor=0)


def test_predict_with_full_accuracy_gives_the_true_labels() -> None:
    """accuracy 1.0: every image gets its true label; unknown images get none."""
    result = dogs_dummy.predict([*TRUTH, "new.jpg"], TRUTH, 1.0, per_class=True, rng=random.Random(1))
    assert result.predictions == {**TRUTH, "new.jpg": None}
    assert result.num_correct == 9  # None == None counts, as in the launcher


def test_predict_per_class_gets_the_same_share_wrong_in_each_class() -> None:
    """accuracy 0.5 per class: two of four dogs and two of four cats are wrong."""
    result = dogs_dummy.predict(TRUTH, TRUTH, 0.5, per_class=True, rng=random.Random(7))
    wrong = [f for f, p in result.predictions.items() if p != TRUTH[f]]
    assert sorted(TRUTH[f] for f in wrong) == ["cat", "cat", "dog", "dog"]
    assert all(result.predictions[f] != TRUTH[f] and result.predictions[f] in {"cat", "dog"} for f in wrong)


def test_predict_over_the_dataset_gets_round_share_wrong() -> None:
    """accuracy 0.25 over all: round(0.75 * 8) = 6 images are wrong."""
    result = dogs_dummy.predict(TRUTH, TRUTH, 0.25, per_class=False, rng=random.Random(3))
    assert sum(result.predictions[f] != TRUTH[f] for f in TRUTH) == 6


def test_predict_with_a_single_label_keeps_it() -> None:
    """With one known label there is no other to pick: the image keeps it."""
    truth = {"a.jpg": "dog", "b.jpg": "dog"}
    result = dogs_dummy.predict(truth, truth, 0.0, per_class=True, rng=random.Random(0))
    assert result.predictions == truth


def test_predictions_are_written_one_text_file_per_image(tmp_path: Path) -> None:
    """Each image's label goes into '<stem>.txt'; an image without one gets an empty file."""
    result = dogs_dummy.predict(["d1.jpg", "new.jpg"], TRUTH, 1.0, per_class=False)
    files = dogs_dummy.write_predictions(result, tmp_path / "out")
    assert sorted(p.name for p in files) == ["d1.txt", "new.txt"]
    assert (tmp_path / "out" / "d1.txt").read_text() == "dog"
    assert (tmp_path / "out" / "new.txt").read_text() == ""
    assert result.labels_to_store() == {"d1.jpg": "dog"}


def test_predict_metadata_has_the_current_plugins_shape() -> None:
    """metadata = {frontend, job: {executor, model, num_files, per_class, files, num_correct,
    accuracy}}, keys in the plugin's order; accuracy = num_correct / num_files."""
    result = dogs_dummy.predict(["d1.jpg", "d2.jpg", "c1.jpg", "c2.jpg"], TRUTH, 0.5, per_class=True,
                                rng=random.Random(2))
    meta = result.metadata(None)
    files = {f: {"predicted_label": p, "correct_label": TRUTH[f], "correct": p == TRUTH[f]}
             for f, p in result.predictions.items()}
    assert meta == {"frontend": None,
                    "job": {"executor": "predict", "model": 0.5, "num_files": 4, "per_class": True,
                            "files": files, "num_correct": 2, "accuracy": 0.5}}
    assert list(meta["job"]) == ["executor", "model", "num_files", "per_class", "files", "num_correct",
                                 "accuracy"]


def test_model_text_round_trips_and_garbage_is_refused() -> None:
    """read_model reads what train writes; a model that holds no accuracy fails the job."""
    assert dogs_dummy.read_model(dogs_dummy.train(TRUTH, TRUTH, 16).model_text()) == 0.5
    with pytest.raises(JobFailed, match="not an accuracy"):
        dogs_dummy.read_model("PK\x03\x04garbage")
    with pytest.raises(JobFailed, match="not within"):
        dogs_dummy.read_model("1.5")
