"""Dataset, Docker-image and pretrained-model rows as JSON built by SQLite, for streamed lists.

Each ``*_JSON_SQL`` expression renders one row of the matching ``records_store``
resource (``DATASETS``, ``DOCKER_IMAGES``, ``PRETRAINED_MODELS``, whose
``from_sql`` it reads) with the same keys, in the same order, as
``dataset_json``, ``docker_json`` and ``pretrained_json`` there
(tests/server/test_record_lists.py holds them together), so that
``listing.stream_list`` builds these lists in a worker thread as it does job lists.
"""

from __future__ import annotations


def _json_object(*pairs: str) -> str:
    return "json_object(" + ", ".join(pairs) + ")"


def _bool(column: str) -> str:
    return f"CASE WHEN {column} THEN json('true') ELSE json('false') END"


# A dataset's files as {name: sha256}, by name, as dataset_json shows them.
_FILES = """json(coalesce((SELECT json_group_object(name, sha256) FROM
    (SELECT name, sha256 FROM dataset_files WHERE dataset = d.pk ORDER BY name)), '{}'))"""
DATASET_JSON_SQL = _json_object(
    "'pk', d.pk", "'name', d.name", "'version', d.version", "'previous_version', d.previous_version",
    "'description', d.description", "'project', d.project", "'licence', d.licence",
    f"'is_public', {_bool('d.is_public')}", "'domain', dm.name", "'tags', d.tags",
    "'creator', d.creator", "'creation_time', d.creation_time", "'deletion_time', d.deletion_time",
    f"'files', {_FILES}")
_GENERATION = ("CASE WHEN i.min_hardware_generation IS NULL THEN json('null') ELSE "
               + _json_object("'pk', i.min_hardware_generation", "'generation', h.generation",
                              "'min_compute_capability', h.min_cc", "'max_compute_capability', h.max_cc")
               + " END")
DOCKER_JSON_SQL = _json_object(
    "'pk', i.pk", "'name', i.name", "'version', i.version", "'url', i.url",
    "'registry_url', i.registry_url", "'registry_username', i.registry_username",
    "'registry_password', i.registry_password",
    "'cuda_version', " + _json_object("'pk', i.cuda_version", "'version', c.version",
                                      "'full_version', c.full_version",
                                      "'min_driver_version', c.min_driver_version"),
    "'framework', " + _json_object("'pk', i.framework", "'name', f.name", "'version', f.version"),
    "'domain', i.domain", "'tasks', json(i.tasks)", f"'min_hardware_generation', {_GENERATION}",
    f"'cpu', {_bool('i.cpu')}", "'licence', i.licence")
PRETRAINED_JSON_SQL = _json_object(
    "'pk', m.pk", "'url', m.url", "'description', m.description", "'name', m.name",
    "'metadata', json(m.metadata)",
    "'framework', " + _json_object("'pk', m.framework", "'name', f.name", "'version', f.version"),
    "'domain', m.domain", "'licence', m.licence", "'data', json('false')", "'creator', m.creator",
    "'creation_time', m.creation_time", "'deletion_time', m.deletion_time")
