"""Property tests over every route of the embedded server, fed hostile input.

Properties, checked on every example: no 5xx; every error is a JSON object
with a ``detail``; a refused call changes nothing (a node's ``last_seen``
aside); a caller without a valid token changes nothing at all; no stray file
appears in the data directory. After every test the server still answers.
"""

from __future__ import annotations

import re
import time
import warnings
from typing import Any

import jwt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jwt.warnings import InsecureKeyLengthWarning

from tests.server.conftest import TEMPLATE
from ufdl_node.server import filters
from ufdl_node.server.app import MAX_JSON_BYTES, ROUTES

from . import strategies as s
from .conftest import (
    DOCKER,
    DOMAIN_PREFIXES,
    FILE_NAMES,
    PER_ROUTE_EXAMPLES,
    PRETRAINED,
    RECORD_TABLES,
    Reply,
    Target,
    check,
)

# Wide filters make bodies of tens of kB; hypothesis warns when it prints such an example.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]
# Routes only staff may use (UFDL-API.md section 3): an ordinary user is always refused.
STAFF_ONLY = {"POST /v1/job-templates/import", "POST /v1/job-templates/create",
              "PUT /v1/jobs/{pk:\\d+}", "PATCH /v1/jobs/{pk:\\d+}",
              "DELETE /v1/jobs/{pk:\\d+}", "DELETE /v1/jobs/{pk:\\d+}/hard",
              "DELETE /v1/jobs/{pk:\\d+}/reinstate", "DELETE /v1/jobs/{pk:\\d+}/abort",
              "DELETE /v1/jobs/{pk:\\d+}/cancel", "DELETE /v1/jobs/{pk:\\d+}/outputs/{name}/{type}",
              "POST /v1/docker/create", "POST /v1/pretrained-models/create"}
# Routes that change a dataset: only its creator, staff, or a node working on it may use them.
DATASET_CHANGES = {f"{method} {prefix}/{{pk:\\d+}}{rest}"
                   for prefix in ("/v1/datasets", *DOMAIN_PREFIXES.values())
                   for method, rest in (("DELETE", ""), ("DELETE", "/clear"), ("POST", "/files/{name:.+}"),
                                        ("DELETE", "/files/{name:.+}"), ("POST", "/metadata/{name:.+}"))} \
    | {f"{m} {DOMAIN_PREFIXES[d]}/{{pk:\\d+}}/categories" for m in ("PATCH", "POST") for d in ("ic", "sc")} \
    | {f"{m} /v1/objdet/datasets/{{pk:\\d+}}/{rest}" for m, rest in (
        ("POST", "file-type/{name:.+}"), ("POST", "annotations"), ("DELETE", "annotations"),
        ("POST", "annotations/{name:.+}"), ("PATCH", "annotations/{name:.+}"),
        ("DELETE", "annotations/{name:.+}"))} \
    | {"POST /v1/speech/datasets/{pk:\\d+}/transcriptions/{name:.+}"}
AUTH_ROUTES = {"POST /v1/auth/obtain", "POST /v1/auth/refresh"}
_PARAM = re.compile(r"\{(\w+)(?::[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}")


def _plausible(refresh_token: str) -> dict[str, dict[str, Any]]:
    """A valid body for each route that reads one, by route (where routes share a handler
    name but not a body) or by handler name."""
    return {
        "dataset_create": {"name": "fuzzed", "version": 1, "description": "d\nmore", "project": 1,
                           "licence": 1, "is_public": False, "tags": "a,b"},
        "dataset_download": {"filetype": "tar.gz",
                             "params": {"annotations_args": ["to-subdir-ic", "-o", "."]}},
        "categories_modify": {"method": "add", "images": [FILE_NAMES[1]], "categories": ["cat"]},
        "categories_set": {FILE_NAMES[1]: ["cat", "pet"]},
        "metadata_set": {"metadata": "m"},
        "all_set": {FILE_NAMES[0]: {"format": "png", "dimensions": [2, 2], "annotations": [
            {"x": 0, "y": 0, "width": 1, "height": 1, "label": "dog", "prefix": "Object",
             "polygon": {"points": [[0, 0], [1, 0], [1, 1]]}}]}},
        "transcription_set": {"transcription": "t"},
        "docker_create": {**DOCKER, "version": "fuzzed"},
        "pretrained_create": {**PRETRAINED, "name": "fuzzed"},
        "obtain": {"username": "worker", "password": "nope"},
        "refresh": {"refresh": refresh_token},
        "node_create": {"ip": "10.66.0.1", "index": 0, "cpu_mem": 1, "gpu_mem": 1,
                        "driver_version": "1", "hardware_generation": 1},
        "node_update": {"ip": "10.66.0.2", "index": 1, "cpu_mem": 1},
        "template_import": {**TEMPLATE, "name": "fuzzed"},
        "create_job": {"input_values": {}, "parameter_values": {"data": {"value": 1, "type": "JSON"}},
                       "description": "d", "notification_override": None},
        "job_update": {"description": "d"},
        "start": {"send_notification": "x"},
        "progress": {"epoch": 1},
        "finish": {"success": True, "send_notification": "x", "error": "e"},
    }


def _base(route: int, refresh_token: str) -> dict[str, Any] | None:
    """The valid body of a route, if it reads one."""
    plausible = _plausible(refresh_token)
    return plausible.get(ROUTE_IDS[route], plausible.get(ROUTES[route][2].__name__))


_BODIES: dict[tuple[int, str], st.SearchStrategy[bytes]] = {}


def _bodies(route: int, target: Target) -> st.SearchStrategy[bytes]:
    """Bodies for a route: a valid body bent one field at a time, or anything. Made once per
    route and token (hypothesis validates a strategy object on its first draw, at a cost)."""
    refresh = target.tokens["worker"]["refresh"]
    if (route, refresh) not in _BODIES:
        _BODIES[route, refresh] = _make_bodies(route, refresh)
    return _BODIES[route, refresh]


def _make_bodies(route: int, refresh: str) -> st.SearchStrategy[bytes]:
    if ROUTES[route][2].__name__.endswith("_list"):
        return s.list_bodies
    base = _base(route, refresh)
    generic = s.bodies(sorted(base) if base else ["description"])
    return generic if base is None else st.one_of(s.variants(base), s.variants(base), s.shaped(base), generic)


def _rows(template: str, target: Target) -> list[int]:
    """The pks of rows of a route's own kind, the first one the worker's where that matters."""
    by_domain = {domain: [pk for key, pk in target.datasets.items()
                          if key in (f"worker_{domain}", f"admin_{domain}")] for domain in DOMAIN_PREFIXES}
    by_domain["ic"] = [target.datasets["worker"], target.datasets["admin"]]
    for prefix, rows in (("/v1/job-templates", [target.template]), ("/v1/nodes", list(target.nodes.values())),
                         ("/v1/datasets", list(target.datasets.values())),
                         *((p, by_domain[d]) for d, p in DOMAIN_PREFIXES.items()),
                         ("/v1/docker", [target.docker]), ("/v1/pretrained-models", [target.pretrained]),
                         ("/v1/job-outputs", target.outputs)):
        if template.startswith(prefix + "/"):
            return rows
    return [target.jobs[2], *target.jobs]


def _path(template: str, target: Target, draw: Any) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "pk":
            # Aim at rows of the route's own kind, so that most requests get past the lookup.
            aim = draw(st.sampled_from([True, True, True, False]))
            known = _rows(template, target)
            return str(draw(st.sampled_from(known))) if aim else s.segment(draw(s.pk_texts))
        if name == "amount":
            return draw(s.amounts)
        if "/files/" in template and draw(st.booleans()):
            return s.segment(draw(st.sampled_from(FILE_NAMES)))  # a file the dataset has
        return draw(s.names)

    return _PARAM.sub(fill, template)


_FORGED: dict[int, list[str]] = {}


def _forged(target: Target) -> list[str]:
    """Tokens no caller may act with: garbage, wrong key, alg none, expired, wrong type, tampered."""
    if id(target) not in _FORGED:
        _FORGED[id(target)] = _forge_all(target)
    return _FORGED[id(target)]


def _forge_all(target: Target) -> list[str]:
    now = int(time.time())
    claims = {"token_type": "access", "user_id": 1, "iat": now, "exp": now + 600, "jti": "f"}
    worker = target.tokens["worker"]["access"]
    head, _payload, sig = worker.split(".")
    admin_payload = target.tokens["admin"]["access"].split(".")[1]
    with warnings.catch_warnings():
        # The server's own key under HS512 (short for it, PyJWT warns): refused for its algorithm.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        hs512 = jwt.encode(claims, target.key, algorithm="HS512")
    return [
        "garbage", "", "a.b.c", "ÿþ-not-a-jwt", "e30.e30.", worker + "x",
        jwt.encode(claims, b"k" * 32, algorithm="HS256"),
        jwt.encode(claims, None, algorithm="none"),
        hs512,
        target.forge(exp=now - 10),
        target.forge(token_type="refresh"),
        target.forge(token_type=None),
        target.forge(user_id=2**64),
        target.forge(user_id=-1),
        target.forge(user_id="1"),
        target.forge(user_id=10_000),
        target.tokens["worker"]["refresh"],
        f"{head}.{admin_payload}.{sig}",  # the admin's claims under the worker's signature
    ]


def _headers(draw: Any, target: Target, caller: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if caller in ("admin", "worker", "other"):
        headers["Authorization"] = f"Bearer {target.tokens[caller]['access']}"
    elif caller == "forged":
        scheme = draw(st.sampled_from(["Bearer", "bearer", "JWT", "Token"]))
        headers["Authorization"] = f"{scheme} {draw(st.sampled_from(_forged(target)))}"
    elif draw(st.booleans()):
        headers["Authorization"] = draw(st.sampled_from(["", "Bearer", "Bearer ", "Basic YTpi", "x y z"]))
    node = draw(st.sampled_from([None, None, "worker", "worker", "worker2", "admin", "junk"]))
    if caller == "other":
        node = draw(st.sampled_from(["worker", "worker2"]))  # nodes the worker created
    if node == "junk":
        headers["Node-Id"] = draw(st.sampled_from(["", "x", "-1", "99999", str(2**63), "1" * 30, "1 2"]))
    elif node is not None:
        headers["Node-Id"] = str(target.nodes[node])
    content_type = draw(st.sampled_from([None, "application/json", "text/plain", "application/data",
                                         "multipart/form-data; boundary=x"]))
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Content-Disposition"] = draw(st.sampled_from([
            "attachment; filename=out", "attachment; filename=../../x", "attachment",
            "attachment; filename*=utf-8''%ff%fe", 'attachment; filename="/etc/passwd"']))
    return headers


def _send(target: Target, data: st.DataObject, route: int, caller: str) -> tuple[Reply, dict[str, Any]]:
    method, template, _ = ROUTES[route]
    path = _path(template, target, data.draw)
    headers = _headers(data.draw, target, caller)
    body = data.draw(_bodies(route, target), label="body")
    before = target.snapshot()
    reply = target.request(method, path, body=body, headers=headers)
    check(target, before, reply)
    return reply, before


route_indexes = st.integers(0, len(ROUTES) - 1)


@pytest.mark.parametrize("route", range(len(ROUTES)), ids=ROUTE_IDS)
@settings(max_examples=PER_ROUTE_EXAMPLES)
@given(caller=st.sampled_from(["admin", "worker"]), data=st.data())
def test_any_route_answers_hostile_input_with_json_and_no_5xx(target: Target, route: int, caller: str,
                                                              data: st.DataObject) -> None:
    """Staff and ordinary users with hostile paths, headers and bodies: JSON errors, never a 5xx."""
    _send(target, data, route, caller)


@given(route=route_indexes, caller=st.sampled_from(["forged", "anonymous"]), data=st.data())
def test_a_caller_without_a_valid_token_changes_nothing(target: Target, route: int, caller: str,
                                                        data: st.DataObject) -> None:
    """Forged, expired, wrong-type or missing tokens are refused (or never routed); nothing changes."""
    reply, before = _send(target, data, route, caller)
    if ROUTE_IDS[route] not in AUTH_ROUTES:
        parser_refused = reply.status == 400 and reply.json()["detail"].startswith("Bad request:")
        assert reply.status in (401, 404, 405) or parser_refused, \
            (ROUTE_IDS[route], reply.status, reply.body[:300])
        assert target.snapshot() == before


@given(route=st.sampled_from([i for i, r in enumerate(ROUTE_IDS) if r not in AUTH_ROUTES]),
       data=st.data())
def test_an_ordinary_user_cannot_act_for_another_users_node(target: Target, route: int,
                                                            data: st.DataObject) -> None:
    """Another ordinary user sending the worker's Node-Id is refused on every route, unchanged."""
    reply, before = _send(target, data, route, "other")
    parser_refused = reply.status == 400 and reply.json()["detail"].startswith("Bad request:")
    assert reply.status in (403, 404, 405) or parser_refused, \
        (ROUTE_IDS[route], reply.status, reply.body[:300])
    assert target.snapshot() == before


@given(route=st.sampled_from([i for i, r in enumerate(ROUTE_IDS) if r in STAFF_ONLY]), data=st.data())
def test_an_ordinary_user_cannot_do_what_only_staff_may(target: Target, route: int,
                                                        data: st.DataObject) -> None:
    """Every staff-only route refuses an ordinary user, whatever the input, and changes nothing."""
    reply, before = _send(target, data, route, "worker")
    assert reply.status >= 400, (ROUTE_IDS[route], reply.status, reply.body[:300])
    assert target.snapshot() == before


LIST_ROUTES = [i for i, r in enumerate(ROUTE_IDS) if r.endswith("/list")]
JOBS_LIST = ROUTE_IDS.index("POST /v1/jobs/list")
# The bounds' edges, always tried: the largest filters allowed must run, one more is a 400.
EDGE_FILTERS = [s.encode({"expressions": e}) for e in (
    [s.deep(filters.MAX_DEPTH)], [s.deep(filters.MAX_DEPTH + 1)],
    [s.wide(filters.MAX_TERMS - 1)], [s.wide(filters.MAX_TERMS)], [s.wide(3000)])]


@given(route=st.sampled_from(LIST_ROUTES), body=s.list_bodies)
@example(route=JOBS_LIST, body=EDGE_FILTERS[0])
@example(route=JOBS_LIST, body=EDGE_FILTERS[1])
@example(route=JOBS_LIST, body=EDGE_FILTERS[2])
@example(route=JOBS_LIST, body=EDGE_FILTERS[3])
@example(route=JOBS_LIST, body=EDGE_FILTERS[4])
def test_list_filters_of_any_shape_are_answered(target: Target, route: int, body: bytes) -> None:
    """Deep, wide, mistyped and unknown filter specifications: a 200 list or a JSON 400."""
    method, path, _ = ROUTES[route]
    before = target.snapshot()
    reply = target.request(method, path, body=body, headers={
        "Authorization": f"Bearer {target.tokens['worker']['access']}",
        "Content-Type": "application/json"})
    check(target, before, reply)
    assert reply.status in (200, 400), (reply.status, reply.body[:300])
    # The database's refusal is a last line of defence: a filter within the bounds must run.
    assert b"the database refused" not in reply.body, reply.body[:300]


@given(name=s.names, type_=s.names, payload=st.binary(max_size=64) | st.just(b"x" * 5000),
       disposition=st.sampled_from(["attachment; filename=out", "attachment; filename=../../../x",
                                    "attachment; filename=/etc/passwd", "attachment", None]))
def test_outputs_with_odd_names_stay_inside_the_data_directory(target: Target, name: str, type_: str,
                                                               payload: bytes,
                                                               disposition: str | None) -> None:
    """Uploads named "..", "%2F" or worse, and over the size limit: stored by pk or refused."""
    job = target.jobs[2]  # started, held by the worker's node
    headers = {"Authorization": f"Bearer {target.tokens['worker']['access']}",
               "Node-Id": str(target.nodes["worker"]), "Content-Type": "application/data"}
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    path = f"/v1/jobs/{job}/outputs/{name}/{type_}"
    before = target.snapshot()
    reply = target.request("POST", path, body=payload, headers=headers)
    check(target, before, reply)
    if reply.status == 200:
        info = target.request("GET", path + "/info", headers=headers)
        check(target, target.snapshot(), info)
        download = target.request("GET", path, headers=headers)
        assert download.status == 200 and download.body == payload


BODY_ROUTES = [(i, r) for i, r in enumerate(ROUTE_IDS) if _base(i, "") is not None]
UPLOADS = {"POST /v1/jobs/{pk:\\d+}/outputs/{name}/{type}", "POST /v1/datasets/{pk:\\d+}/files/{name:.+}",
           "POST /v1/classify/datasets/{pk:\\d+}/files/{name:.+}"}
# Routes that read a body (a DELETE that takes none ignores one, as Django does).
TAKES_BODY = [r for i, r in enumerate(ROUTE_IDS)
              if r in UPLOADS or i in LIST_ROUTES or any(i == j for j, _ in BODY_ROUTES)]


@pytest.mark.parametrize("route", TAKES_BODY)
def test_a_json_body_over_the_limit_is_refused(target: Target, route: str) -> None:
    """A body past the JSON limit on any route that takes one: refused in JSON, nothing stored."""
    method, template = route.split(" ", 1)
    fills = {"pk": str(_rows(template, target)[0]), "amount": "0.5"}
    path = _PARAM.sub(lambda m: fills.get(m.group(1), "big"), template)
    headers = {"Authorization": f"Bearer {target.tokens['worker']['access']}",
               "Node-Id": str(target.nodes["worker"]), "Content-Type": "application/json",
               "Content-Disposition": "attachment; filename=big"}
    before = target.snapshot()
    reply = target.request(method, path, body=b" " * (MAX_JSON_BYTES + 1), headers=headers)
    check(target, before, reply)
    assert reply.status >= 400, (route, reply.status)


# One of each kind of value that has broken a server: not finite, past 64 bits, not Unicode, wrong type.
SWEEP_VALUES = [float("nan"), float("inf"), 2**64, -1, "\ud800", None, [], {"": 1}]
# The key each create route's valid body must vary to make a new row, not a duplicate's 400.
UNIQUE_KEYS = {"template_import": "name", "dataset_create": "name", "docker_create": "version",
               "pretrained_create": "name"}


def _aimed(route: int, target: Target) -> tuple[str, dict[str, str]]:
    """The route's path at the worker's own rows, and headers of a caller allowed to use it."""
    template = ROUTES[route][1]
    # A dataset file's routes aim at a file the worker's datasets have (restock puts it there).
    fills = {"pk": str(_rows(template, target)[0]), "amount": "0.5"}
    if "/datasets/" in template:
        fills["name"] = s.segment(FILE_NAMES[0])
    path = _PARAM.sub(lambda m: fills.get(m.group(1), "0.5"), template)
    caller = "admin" if ROUTE_IDS[route] in STAFF_ONLY else "worker"
    headers = {"Authorization": f"Bearer {target.tokens[caller]['access']}",
               "Content-Type": "application/json"}
    if caller == "worker":
        headers["Node-Id"] = str(target.nodes["worker"])
    return path, headers


@pytest.mark.parametrize("route", [i for i, _ in BODY_ROUTES], ids=[r for _, r in BODY_ROUTES])
def test_every_field_of_a_valid_body_bent_to_each_hostile_value(target: Target, route: int) -> None:
    """Each field of a valid body, at any depth, set to each hostile value in turn, or left out."""
    method, _, handler = ROUTES[route]
    path, headers = _aimed(route, target)
    base = _base(route, target.tokens["worker"]["refresh"])
    assert base is not None
    target.restock()  # so that a valid body is valid: its images are there
    unique = UNIQUE_KEYS.get(handler.__name__)
    for n, field_path in enumerate(s.paths(base)):
        for m, (value, drop) in enumerate([*((v, False) for v in SWEEP_VALUES), (None, True)]):
            # a create gets a fresh name each time: a duplicate's 400 would hide the field's check
            valid = base if unique is None else {**base, unique: f"sweep-{route}-{n}-{m}"}
            body = s.encode(s.replaced(valid, field_path, value, drop))
            before = target.snapshot()
            check(target, before, target.request(method, path, body=body, headers=headers))


_NEW = ("/v1/datasets", "/v1/classify", "/v1/docker", "/v1/pretrained", "/v1/objdet", "/v1/speech",
        "/v1/spectra")
NEW_BODY_ROUTES = [(i, r) for i, r in BODY_ROUTES if r.split()[1].startswith(_NEW)]


@pytest.mark.parametrize("route", [i for i, _ in NEW_BODY_ROUTES], ids=[r for _, r in NEW_BODY_ROUTES])
def test_the_valid_bodies_of_the_dataset_and_record_routes_are_accepted(target: Target, route: int) -> None:
    """The sweep's starting points are valid: unbent, each is answered with a 2xx."""
    target.restock()
    method, _, handler = ROUTES[route]
    path, headers = _aimed(route, target)
    base = _base(route, target.tokens["worker"]["refresh"])
    unique = UNIQUE_KEYS.get(handler.__name__)
    body = base if unique is None else {**base, unique: f"valid-{route}"}
    reply = target.request(method, path, body=s.encode(body), headers=headers)
    check(target, target.snapshot(), reply)
    assert 200 <= reply.status < 300, (ROUTE_IDS[route], reply.status, reply.body[:300])


@given(route=st.sampled_from([i for i, r in enumerate(ROUTE_IDS) if r in DATASET_CHANGES]),
       owner=st.sampled_from(["worker", "admin"]), data=st.data())
def test_an_ordinary_user_cannot_change_another_users_dataset(target: Target, route: int, owner: str,
                                                              data: st.DataObject) -> None:
    """A second ordinary user is refused (403) every change to a dataset it did not create."""
    method, template, _ = ROUTES[route]
    domain = next((d for d, prefix in DOMAIN_PREFIXES.items() if template.startswith(prefix + "/")), "ic")
    dataset = target.datasets[owner if domain == "ic" else f"{owner}_{domain}"]
    path = _PARAM.sub(lambda m: str(dataset) if m.group(1) == "pk" else
                      s.segment(data.draw(st.sampled_from([*FILE_NAMES, "new.png"]))), template)
    headers = {"Authorization": f"Bearer {target.tokens['other']['access']}",
               "Content-Type": data.draw(st.sampled_from(["application/json", "application/data"])),
               "Content-Disposition": "attachment; filename=upload"}
    before = target.snapshot()
    reply = target.request(method, path, body=data.draw(_bodies(route, target), label="body"),
                           headers=headers)
    check(target, before, reply)
    assert reply.status == 403, (ROUTE_IDS[route], reply.status, reply.body[:300])


@pytest.mark.parametrize("route", ["POST /v1/docker/create", "POST /v1/pretrained-models/create"])
def test_an_ordinary_user_cannot_create_records(target: Target, route: str) -> None:
    """A valid Docker-image or pretrained-model record from an ordinary user: 403, nothing stored."""
    index = ROUTE_IDS.index(route)
    base = _base(index, "")
    assert base is not None
    before = target.snapshot()
    reply = target.call("POST", route.split()[1], as_="worker", json_body={**base, "name": "by-worker"})
    check(target, before, reply)
    assert reply.status == 403, (route, reply.status, reply.body[:300])


def test_the_state_check_covers_the_dataset_and_record_tables(target: Target) -> None:
    """The snapshot a refused call is checked against holds the tables of store migration 3, and
    the bytes of dataset files."""
    target.restock()
    snap = target.snapshot()
    assert RECORD_TABLES <= set(snap)
    assert all(snap[t] for t in ("datasets", "dataset_files", "categories", "docker_images",
                                 "pretrained_models"))
    assert any(path.startswith("datasets/") for path, _ in snap["files"])


def test_a_dataset_file_no_row_references_is_stray(target: Target) -> None:
    """Under datasets/, only files named by a dataset file's pk are known: others (a deleted
    file's pk, a pk no file ever had, a name, a leftover upload, a folder) are stray."""
    before = target.pks("dataset_files")
    file = f"/v1/datasets/{target.datasets['worker']}/files/gone.png"
    reply = target.request("POST", file, body=b"gone", headers={
        "Authorization": f"Bearer {target.tokens['worker']['access']}",
        "Content-Type": "application/data", "Content-Disposition": "attachment; filename=gone"})
    assert reply.status == 200, reply.body[:300]
    (deleted,) = target.pks("dataset_files") - before
    target.ok("DELETE", file)
    folder = target.data_dir / "datasets"
    orphans = [folder / deleted, folder / "999999", folder / ".upload-x.part", folder / "dog.png",
               folder / "sub"]
    try:
        for orphan in orphans[:-1]:
            orphan.write_bytes(b"x")
        orphans[-1].mkdir()
        assert target.stray_files() == sorted(f"datasets/{p.name}" for p in orphans)
    finally:
        for orphan in orphans[:-1]:
            orphan.unlink(missing_ok=True)
        orphans[-1].rmdir()
    assert target.stray_files() == []


def test_the_fuzzer_knows_the_routes_it_singles_out() -> None:
    """The staff-only and auth routes named here exist (a rename must not shrink what is fuzzed)."""
    assert STAFF_ONLY <= set(ROUTE_IDS) and AUTH_ROUTES <= set(ROUTE_IDS)
    assert DATASET_CHANGES <= set(ROUTE_IDS) and UPLOADS <= set(ROUTE_IDS) and len(NEW_BODY_ROUTES) == 23
