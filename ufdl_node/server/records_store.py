"""SQL for what jobs work on: datasets, their files and categories, Docker-image and pretrained-model records.

The tables come from migration 3 in ``store.py``; this module keeps their
statements apart from the job tables' so that each stays a readable size. Like
``Store``, every statement is a short indexed read or write run on the event
loop. A dataset file's bytes live in ``<data dir>/datasets/<file pk>``: a name
from a request is only ever data in a row, never part of a path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .filters import Column, Query, Resource
from .store import Conflict, Store, now

DATASETS_DIR = "datasets"

# A dataset's domain is stored as its code ('' for none) and shown as the domain's name.
DATASETS = Resource(
    from_sql="datasets d LEFT JOIN domains dm ON dm.code = d.domain", pk_sql="d.pk",
    deletion_sql="d.deletion_time",
    fields={"pk": Column("d.pk", "int"), "name": Column("d.name", "str"),
            "version": Column("d.version", "int"),
            "previous_version": Column("d.previous_version", "int"),
            "description": Column("d.description", "str"), "project": Column("d.project", "int"),
            "licence": Column("d.licence", "int"), "is_public": Column("d.is_public", "bool"),
            "domain": Column("dm.name", "str"), "tags": Column("d.tags", "str"),
            "creator": Column("d.creator", "int"),
            "creation_time": Column("d.creation_time", "time"),
            "deletion_time": Column("d.deletion_time", "time")})
DOCKER_IMAGES = Resource(
    from_sql="docker_images i JOIN cuda_versions c ON c.pk = i.cuda_version "
             "JOIN frameworks f ON f.pk = i.framework LEFT JOIN hardware h "
             "ON h.pk = i.min_hardware_generation", pk_sql="i.pk",
    fields={"pk": Column("i.pk", "int"), "name": Column("i.name", "str"),
            "version": Column("i.version", "str"), "url": Column("i.url", "str"),
            "registry_url": Column("i.registry_url", "str"),
            "cuda_version": Column("c.pk", "int"), "cuda_version.version": Column("c.version", "str"),
            "framework": Column("f.pk", "int"), "framework.name": Column("f.name", "str"),
            "framework.version": Column("f.version", "str"), "domain": Column("i.domain", "str"),
            "min_hardware_generation": Column("h.pk", "int"),
            "min_hardware_generation.generation": Column("h.generation", "str"),
            "cpu": Column("i.cpu", "bool"), "licence": Column("i.licence", "str")})
PRETRAINED_MODELS = Resource(
    from_sql="pretrained_models m JOIN frameworks f ON f.pk = m.framework", pk_sql="m.pk",
    deletion_sql="m.deletion_time",
    fields={"pk": Column("m.pk", "int"), "name": Column("m.name", "str"),
            "description": Column("m.description", "str"), "url": Column("m.url", "str"),
            "framework": Column("f.pk", "int"), "framework.name": Column("f.name", "str"),
            "framework.version": Column("f.version", "str"), "domain": Column("m.domain", "str"),
            "licence": Column("m.licence", "str"), "creator": Column("m.creator", "int"),
            "creation_time": Column("m.creation_time", "time"),
            "deletion_time": Column("m.deletion_time", "time")})

_FILES_JSON = """(SELECT json_group_object(name, sha256) FROM
    (SELECT name, sha256 FROM dataset_files WHERE dataset = d.pk ORDER BY name)) AS files_json"""
_DATASET_SELECT = f"SELECT d.*, dm.name AS domain_name, {_FILES_JSON} FROM {DATASETS.from_sql}"
_DOCKER_SELECT = """SELECT i.*, c.version AS c_version, c.full_version AS c_full_version,
    c.min_driver_version AS c_min_driver_version, f.name AS f_name, f.version AS f_version,
    h.generation AS h_generation, h.min_cc AS h_min_cc, h.max_cc AS h_max_cc FROM """ \
    + DOCKER_IMAGES.from_sql
_PRETRAINED_SELECT = "SELECT m.*, f.name AS f_name, f.version AS f_version FROM " \
    + PRETRAINED_MODELS.from_sql


def _select(store: Store, select: str, query: Query) -> list[sqlite3.Row]:
    return list(store.db.execute(f"{select} WHERE {query.where} ORDER BY {query.order}", query.params))


def _insert(store: Store, table: str, fields: dict[str, Any], duplicate: str,
            place: Callable[[int], None] | None = None) -> int:
    """Insert one row; a (name, version) tuple under ``framework`` becomes that framework's pk,
    made in the same transaction when new (a refused insert leaves no framework behind).
    `place(pk)` runs inside the transaction, before the commit (a file's bytes take their name)."""
    # Table and column names come from this package's code, never from a request.
    try:
        with store.transaction() as db:
            if isinstance(fields.get("framework"), tuple):
                fields = dict(fields, framework=_framework_pk(db, *fields["framework"]))
            cursor = db.execute(f"INSERT INTO {table} ({', '.join(fields)}) "
                                f"VALUES ({', '.join('?' * len(fields))})", list(fields.values()))
            if place is not None:
                assert cursor.lastrowid is not None
                place(cursor.lastrowid)
    except sqlite3.IntegrityError:
        raise Conflict(duplicate) from None
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _one(store: Store, sql: str, *params: Any) -> sqlite3.Row | None:
    row: sqlite3.Row | None = store.db.execute(sql, params).fetchone()
    return row


# -- datasets ------------------------------------------------------------------------------


def datasets_dir(store: Store) -> Path:
    return store.data_dir / DATASETS_DIR


def file_path(store: Store, file_pk: int) -> Path:
    """A dataset file's bytes live in a file named by its pk, never by a request's name."""
    return datasets_dir(store) / str(int(file_pk))


def dataset_json(row: sqlite3.Row) -> dict[str, Any]:
    return {"pk": row["pk"], "name": row["name"], "version": row["version"],
            "previous_version": row["previous_version"], "description": row["description"],
            "project": row["project"], "licence": row["licence"], "is_public": bool(row["is_public"]),
            "domain": row["domain_name"], "tags": row["tags"], "creator": row["creator"],
            "creation_time": row["creation_time"], "deletion_time": row["deletion_time"],
            "files": json.loads(row["files_json"] or "{}")}


def dataset(store: Store, pk: int) -> sqlite3.Row | None:
    return _one(store, f"{_DATASET_SELECT} WHERE d.pk = ?", pk)


def dataset_head(store: Store, pk: int) -> sqlite3.Row | None:
    """The dataset's row without its file list: one indexed read, where :func:`dataset`
    also reads every file's row (what a route about one file must not pay for each file)."""
    return _one(store, f"SELECT d.*, dm.name AS domain_name FROM {DATASETS.from_sql} WHERE d.pk = ?", pk)


def create_dataset(store: Store, fields: dict[str, Any]) -> int:
    return _insert(store, "datasets", dict(fields, creation_time=now()),
                   "A dataset with this name and version exists already")


def soft_delete_dataset(store: Store, pk: int) -> None:
    with store.transaction() as db:
        db.execute("UPDATE datasets SET deletion_time = ? WHERE pk = ? AND deletion_time IS NULL",
                   (now(), pk))


def dataset_files(store: Store, dataset_pk: int) -> list[sqlite3.Row]:
    return list(store.db.execute("SELECT * FROM dataset_files WHERE dataset = ? ORDER BY name",
                                 (dataset_pk,)))


def dataset_file(store: Store, dataset_pk: int, name: str) -> sqlite3.Row | None:
    return _one(store, "SELECT * FROM dataset_files WHERE dataset = ? AND name = ?", dataset_pk, name)


def add_file(store: Store, dataset_pk: int, name: str, sha256: str, size: int,
             place: Callable[[int], None] | None = None) -> int:
    """A file's row; `place(pk)` puts its bytes under the new pk before the row commits, so that
    a crash leaves the row and its bytes, or neither (never a row without bytes)."""
    return _insert(store, "dataset_files", {"dataset": dataset_pk, "name": name, "sha256": sha256,
                                            "size": size, "creation_time": now()},
                   f"The dataset already has a file named {name!r}", place)


def file_pks(store: Store) -> set[int]:
    """The pks of every dataset file row: what may have bytes in the datasets directory."""
    return {int(r[0]) for r in store.db.execute("SELECT pk FROM dataset_files")}


def delete_file(store: Store, file_pk: int) -> None:
    with store.transaction() as db:  # its categories go with it (ON DELETE CASCADE)
        db.execute("DELETE FROM dataset_files WHERE pk = ?", (file_pk,))


# -- image-classification categories ------------------------------------------------------------


def categories(store: Store, dataset_pk: int) -> dict[str, list[str]]:
    """{file name: [category, ...]} for the files that have any, as the real server answers."""
    result: dict[str, list[str]] = {}
    for name, category in store.db.execute(
            """SELECT f.name, c.category FROM categories c JOIN dataset_files f ON f.pk = c.file
               WHERE f.dataset = ? ORDER BY f.name, c.pk""", (dataset_pk,)):
        result.setdefault(name, []).append(category)
    return result


def modify_categories(store: Store, dataset_pk: int, images: Iterable[str], labels: Iterable[str],
                      *, add: bool) -> dict[str, list[str]]:
    """Add (or remove) every label on every image, in one transaction; returns just the changes.

    Raises KeyError naming the first image the dataset does not have (and changes nothing).
    """
    changes: dict[str, list[str]] = {}
    with store.transaction() as db:
        for image in images:
            row = db.execute("SELECT pk FROM dataset_files WHERE dataset = ? AND name = ?",
                             (dataset_pk, image)).fetchone()
            if row is None:
                raise KeyError(image)
            for label in labels:
                if add:
                    cursor = db.execute("INSERT OR IGNORE INTO categories (file, category) VALUES (?, ?)",
                                        (row[0], label))
                else:
                    cursor = db.execute("DELETE FROM categories WHERE file = ? AND category = ?",
                                        (row[0], label))
                if cursor.rowcount == 1:
                    changes.setdefault(image, []).append(label)
    return changes


def clear_annotations(store: Store, dataset_pk: int) -> None:
    """What the real server's clear does: every file's categories, object-detection annotations
    (its format and dimensions stay) and transcription go, its metadata becomes ""."""
    files = "(SELECT pk FROM dataset_files WHERE dataset = ?)"
    with store.transaction() as db:
        db.execute(f"DELETE FROM categories WHERE file IN {files}", (dataset_pk,))
        db.execute(f"UPDATE od_files SET annotations = '[]' WHERE file IN {files}", (dataset_pk,))
        db.execute(f"DELETE FROM transcriptions WHERE file IN {files}", (dataset_pk,))
        db.execute("UPDATE dataset_files SET metadata = '' WHERE dataset = ?", (dataset_pk,))


# -- frameworks, CUDA versions, hardware -------------------------------------------------------


def _framework_pk(db: sqlite3.Connection, name: str, version: str) -> int:
    """The framework (name, version), created on first mention as the real server's migrations
    do; run inside the transaction that stores the record naming it."""
    db.execute("INSERT OR IGNORE INTO frameworks (name, version) VALUES (?, ?)", (name, version))
    row = db.execute("SELECT pk FROM frameworks WHERE name = ? AND version = ?", (name, version)).fetchone()
    return int(row[0])


def cuda_pk(store: Store, version: str) -> int | None:
    row = _one(store, "SELECT pk FROM cuda_versions WHERE version = ? OR full_version = ?",
               version, version)
    return None if row is None else int(row[0])


def cuda_versions(store: Store) -> list[str]:
    return [r[0] for r in store.db.execute("SELECT version FROM cuda_versions ORDER BY pk")]


def hardware_pk(store: Store, generation: str) -> int | None:
    row = _one(store, "SELECT pk FROM hardware WHERE generation = ?", generation)
    return None if row is None else int(row[0])


# -- Docker images ------------------------------------------------------------------------------


def docker_json(row: sqlite3.Row) -> dict[str, Any]:
    """The record as the real server shows it, registry password included (handlers pull with it)."""
    generation = None if row["min_hardware_generation"] is None else {
        "pk": row["min_hardware_generation"], "generation": row["h_generation"],
        "min_compute_capability": row["h_min_cc"], "max_compute_capability": row["h_max_cc"]}
    return {"pk": row["pk"], "name": row["name"], "version": row["version"], "url": row["url"],
            "registry_url": row["registry_url"], "registry_username": row["registry_username"],
            "registry_password": row["registry_password"],
            "cuda_version": {"pk": row["cuda_version"], "version": row["c_version"],
                             "full_version": row["c_full_version"],
                             "min_driver_version": row["c_min_driver_version"]},
            "framework": {"pk": row["framework"], "name": row["f_name"], "version": row["f_version"]},
            "domain": row["domain"], "tasks": json.loads(row["tasks"]),
            "min_hardware_generation": generation, "cpu": bool(row["cpu"]), "licence": row["licence"]}


def docker_image(store: Store, pk: int) -> sqlite3.Row | None:
    return _one(store, f"{_DOCKER_SELECT} WHERE i.pk = ?", pk)


def create_docker_image(store: Store, fields: dict[str, Any]) -> int:
    fields = dict(fields, tasks=json.dumps(fields["tasks"]))
    return _insert(store, "docker_images", fields,
                   "A Docker image with this name, version and CUDA version exists already")


# -- job outputs by their own pk ------------------------------------------------------------


def output_by_pk(store: Store, pk: int) -> sqlite3.Row | None:
    return _one(store, "SELECT * FROM outputs WHERE pk = ?", pk)


# -- pretrained models --------------------------------------------------------------------------


def pretrained_json(row: sqlite3.Row) -> dict[str, Any]:
    # No model bytes are stored here: `data` says so, as it does on the real server.
    return {"pk": row["pk"], "url": row["url"], "description": row["description"],
            "name": row["name"], "metadata": json.loads(row["metadata"]),
            "framework": {"pk": row["framework"], "name": row["f_name"], "version": row["f_version"]},
            "domain": row["domain"], "licence": row["licence"], "data": False,
            "creator": row["creator"], "creation_time": row["creation_time"],
            "deletion_time": row["deletion_time"]}


def pretrained_file(store: Store, pk: int) -> Path:
    """Where the pretrained model `pk`'s file is kept (by its pk: no name from a request)."""
    return store.data_dir / "pretrained" / str(int(pk))


def pretrained_model(store: Store, pk: int) -> sqlite3.Row | None:
    return _one(store, f"{_PRETRAINED_SELECT} WHERE m.pk = ?", pk)


def create_pretrained_model(store: Store, fields: dict[str, Any]) -> int:
    fields = dict(fields, metadata=json.dumps(fields["metadata"]), creation_time=now())
    return _insert(store, "pretrained_models", fields,
                   "A pretrained model with this name and framework exists already")
