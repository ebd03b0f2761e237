"""SQL for what the domain apps keep per dataset file: categories set per file, object-detection
file types and annotations, speech transcriptions, and every file's metadata string.

The tables come from migrations 3 and 4 in ``store.py``. A file is always named by the
dataset's pk and its name; :class:`NoSuchFile` names a file the dataset lacks (the
caller's 400). Like ``records_store``, every statement is a short indexed read or write.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from .store import Store


class NoSuchFile(KeyError):
    """The dataset has no file of this name (args[0])."""


class NoFileType(Exception):
    """An object-detection file without its file type (args[0]: its name)."""


class WrongKind(Exception):
    """An annotation that does not fit its file's kind (args: the file's name, whether it is
    a video): a video's annotations each carry a ``time``, an image's none."""


def _file_pk(db: sqlite3.Connection, dataset_pk: int, name: str) -> int:
    row = db.execute("SELECT pk FROM dataset_files WHERE dataset = ? AND name = ?",
                     (dataset_pk, name)).fetchone()
    if row is None:
        raise NoSuchFile(name)
    return int(row[0])


def file_pk(store: Store, dataset_pk: int, name: str) -> int:
    """The pk of the dataset's file `name`; NoSuchFile without one."""
    return _file_pk(store.db, dataset_pk, name)


# -- categories (image and spectrum classification) ------------------------------------------


def set_categories(store: Store, dataset_pk: int, wanted: Mapping[str, Sequence[str]]) -> None:
    """Replace the categories of each named file (an empty list removes them), in one
    transaction: a file the dataset lacks raises NoSuchFile and changes nothing."""
    with store.transaction() as db:
        for name, labels in wanted.items():
            pk = _file_pk(db, dataset_pk, name)
            db.execute("DELETE FROM categories WHERE file = ?", (pk,))
            db.executemany("INSERT INTO categories (file, category) VALUES (?, ?)",
                           [(pk, label) for label in labels])


def categories_of(store: Store, dataset_pk: int, name: str) -> list[str]:
    """One file's categories; [] for an unlabelled file or one the dataset lacks."""
    return [r[0] for r in store.db.execute(
        """SELECT c.category FROM categories c JOIN dataset_files f ON f.pk = c.file
           WHERE f.dataset = ? AND f.name = ? ORDER BY c.pk""", (dataset_pk, name))]


# -- file metadata ------------------------------------------------------------------------------


def metadata(store: Store, dataset_pk: int) -> dict[str, str]:
    return {r[0]: r[1] for r in store.db.execute(
        "SELECT name, metadata FROM dataset_files WHERE dataset = ? ORDER BY name", (dataset_pk,))}


def metadata_of(store: Store, dataset_pk: int, name: str) -> str:
    row = store.db.execute("SELECT metadata FROM dataset_files WHERE dataset = ? AND name = ?",
                           (dataset_pk, name)).fetchone()
    if row is None:
        raise NoSuchFile(name)
    return str(row[0])


def set_metadata(store: Store, dataset_pk: int, name: str, value: str) -> None:
    with store.transaction() as db:
        db.execute("UPDATE dataset_files SET metadata = ? WHERE pk = ?",
                   (value, _file_pk(db, dataset_pk, name)))


# -- object detection -------------------------------------------------------------------------


def _od_row(db: sqlite3.Connection, dataset_pk: int, name: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute("SELECT * FROM od_files WHERE file = ?",
                                         (_file_pk(db, dataset_pk, name),)).fetchone()
    return row


def _type_of(row: sqlite3.Row) -> dict[str, Any]:
    """A container's file type as the real server answers it: ``length`` only for a video."""
    found: dict[str, Any] = {"format": row["format"], "dimensions": [row["width"], row["height"]]}
    if row["length"] is not None:
        found["length"] = float(row["length"])
    return found


def file_type(store: Store, dataset_pk: int, name: str) -> dict[str, Any] | None:
    """{format, dimensions, length?} of one file, None before it has one; NoSuchFile."""
    row = _od_row(store.db, dataset_pk, name)
    return None if row is None else _type_of(row)


def file_types(store: Store, dataset_pk: int) -> dict[str, dict[str, Any]]:
    """{file: {format, dimensions, length?}} for every file that has a type."""
    return {r["name"]: _type_of(r) for r in store.db.execute(
        """SELECT f.name, o.* FROM od_files o JOIN dataset_files f ON f.pk = o.file
           WHERE f.dataset = ? ORDER BY f.name""", (dataset_pk,))}


def set_file_type(store: Store, dataset_pk: int, name: str, fmt: str, width: int, height: int,
                  length: float | None = None) -> bool:
    """Give a file its type (its annotations' container; a video's with its `length`);
    False when it has one already."""
    with store.transaction() as db:
        cursor = db.execute("INSERT OR IGNORE INTO od_files (file, format, width, height, length) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (_file_pk(db, dataset_pk, name), fmt, width, height, length))
    return cursor.rowcount == 1


def annotations_of(store: Store, dataset_pk: int, name: str) -> list[dict[str, Any]]:
    """One file's annotations; [] before it has a type; NoSuchFile."""
    row = _od_row(store.db, dataset_pk, name)
    return [] if row is None else list(json.loads(row["annotations"]))


def _check_kind(name: str, row: sqlite3.Row, annotations: Sequence[Mapping[str, Any]]) -> None:
    """A video's annotations each carry a time, an image's none (WrongKind otherwise)."""
    video = row["length"] is not None
    for annotation in annotations:
        if ("time" in annotation) != video:
            raise WrongKind(name, video)


def write_annotations(store: Store, dataset_pk: int, name: str, annotations: list[dict[str, Any]],
                      *, append: bool) -> None:
    """Replace (or append to) one file's annotations; NoFileType before it has a type,
    WrongKind (nothing changed) when one does not fit its kind (image or video)."""
    with store.transaction() as db:
        row = _od_row(db, dataset_pk, name)
        if row is None:
            raise NoFileType(name)
        _check_kind(name, row, annotations)
        kept = list(json.loads(row["annotations"])) if append else []
        db.execute("UPDATE od_files SET annotations = ? WHERE file = ?",
                   (json.dumps(kept + annotations), row["file"]))


def all_annotations(store: Store, dataset_pk: int) -> dict[str, dict[str, Any]]:
    """{file: {format, dimensions, length?, annotations}} for every file that has a type."""
    return {r["name"]: {**_type_of(r), "annotations": json.loads(r["annotations"])}
            for r in store.db.execute(
                """SELECT f.name, o.* FROM od_files o JOIN dataset_files f ON f.pk = o.file
                   WHERE f.dataset = ? ORDER BY f.name""", (dataset_pk,))}


def set_all_annotations(store: Store, dataset_pk: int, wanted: Mapping[str, Mapping[str, Any]]) -> None:
    """Set the named files' annotations (and type, where given to a file without one: a
    file's type never changes); every other file's are emptied. One transaction:
    NoSuchFile, NoFileType (a file without a type and none given) or WrongKind changes nothing."""
    with store.transaction() as db:
        db.execute("""UPDATE od_files SET annotations = '[]'
                      WHERE file IN (SELECT pk FROM dataset_files WHERE dataset = ?)""", (dataset_pk,))
        for name, entry in wanted.items():
            pk = _file_pk(db, dataset_pk, name)
            if "format" in entry:
                width, height = entry["dimensions"]
                db.execute("INSERT OR IGNORE INTO od_files (file, format, width, height, length) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (pk, entry["format"], width, height, entry.get("length")))
            row = db.execute("SELECT * FROM od_files WHERE file = ?", (pk,)).fetchone()
            if row is None:
                raise NoFileType(name)
            _check_kind(name, row, entry["annotations"])
            db.execute("UPDATE od_files SET annotations = ? WHERE file = ?",
                       (json.dumps(entry["annotations"]), pk))


def clear_od_annotations(store: Store, dataset_pk: int) -> None:
    with store.transaction() as db:
        db.execute("""UPDATE od_files SET annotations = '[]'
                      WHERE file IN (SELECT pk FROM dataset_files WHERE dataset = ?)""", (dataset_pk,))


# -- speech -------------------------------------------------------------------------------------


def transcription_of(store: Store, dataset_pk: int, name: str) -> str | None:
    """One file's transcription, None without one; NoSuchFile."""
    row = store.db.execute("SELECT transcription FROM transcriptions WHERE file = ?",
                           (file_pk(store, dataset_pk, name),)).fetchone()
    return None if row is None else str(row[0])


def set_transcription(store: Store, dataset_pk: int, name: str, text: str) -> None:
    with store.transaction() as db:
        db.execute("""INSERT INTO transcriptions (file, transcription) VALUES (?, ?)
                      ON CONFLICT (file) DO UPDATE SET transcription = excluded.transcription""",
                   (_file_pk(db, dataset_pk, name), text))


def transcriptions(store: Store, dataset_pk: int) -> dict[str, str]:
    return {r[0]: r[1] for r in store.db.execute(
        """SELECT f.name, t.transcription FROM transcriptions t JOIN dataset_files f ON f.pk = t.file
           WHERE f.dataset = ? ORDER BY f.name""", (dataset_pk,))}
