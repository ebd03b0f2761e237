"""`ufdl-node dataset add`; add → submit train → submit predict through a daemon (real processes)."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from ..handlers.images import image_folder, png
from .conftest import ADMIN_PW, WORKER_PW, ufdl_node

TRAIN, PREDICT = "dogs_dummy_image_class_train", "dogs_dummy_image_class_predict"


def as_admin(server: EmbeddedServer) -> dict[str, str]:
    return {"UFDL_NODE_SERVER_URL": server.url, "UFDL_NODE_USERNAME": "admin", "UFDL_NODE_PASSWORD": ADMIN_PW}


async def cli(server: EmbeddedServer, *args: str) -> tuple[int, str, str]:
    """`ufdl-node ARGS` as the admin, in a real process: (exit code, stdout, stderr)."""
    done = await asyncio.to_thread(ufdl_node, *args, env=as_admin(server))
    return done.returncode, done.stdout, done.stderr


async def read(server: EmbeddedServer, path: str) -> Any:
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        return await admin.request("GET", path)


async def test_dataset_add_prints_the_pk_of_a_dataset_with_the_files_and_labels(server, tmp_path):
    """A folder per label: stdout is the new pk; the record lists every file, the labels are the folders."""
    folder = image_folder(tmp_path / "pets", {"dog": 2, "cat": 1})
    code, out, err = await cli(server, "dataset", "add", str(folder), "--domain", "ic", "--name", "my pets")
    assert code == 0, err
    pk = int(out.strip())
    record = await read(server, f"/v1/datasets/{pk}")
    assert (record["name"], record["version"], record["domain"]) == ("my pets", 1, "Image Classification")
    assert sorted(record["files"]) == ["cat0.png", "dog0.png", "dog1.png"]
    labels = await read(server, f"/v1/classify/datasets/{pk}/categories")
    assert labels == {"cat0.png": ["cat"], "dog0.png": ["dog"], "dog1.png": ["dog"]}


async def test_dataset_add_reads_a_labels_file(server, tmp_path):
    """Images at the top with labels.csv ('file,label'): those labels, and the csv is not a file."""
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(1, 2, 3))
    (folder / "b.png").write_bytes(png(4, 5, 6))
    (folder / "labels.csv").write_text("file,label\na.png,apple\nb.png,banana\n")
    code, out, err = await cli(server, "dataset", "add", str(folder))
    assert code == 0, err
    pk = int(out.strip())
    assert sorted((await read(server, f"/v1/datasets/{pk}"))["files"]) == ["a.png", "b.png"]
    assert await read(server, f"/v1/classify/datasets/{pk}/categories") == {"a.png": ["apple"],
                                                                          "b.png": ["banana"]}


async def test_dataset_add_of_a_name_that_exists_makes_the_next_version(server, tmp_path):
    """Adding the same folder twice gives 'pets' v1, then v2."""
    folder = image_folder(tmp_path / "pets", {"dog": 1})
    first = int((await cli(server, "dataset", "add", str(folder)))[1])
    second = int((await cli(server, "dataset", "add", str(folder)))[1])
    versions = [(await read(server, f"/v1/datasets/{pk}"))["version"] for pk in (first, second)]
    assert versions == [1, 2]


async def test_dataset_add_refuses_two_files_of_one_name_with_one_line(server, tmp_path):
    """dog/x.png and cat/x.png cannot both be dataset files: exit 2, one line naming both, nothing created."""
    folder = tmp_path / "clash"
    for label in ("dog", "cat"):
        (folder / label).mkdir(parents=True)
        (folder / label / "x.png").write_bytes(png(0, 0, 0))
    code, out, err = await cli(server, "dataset", "add", str(folder))
    assert code == 2 and out == ""
    assert err.strip() == (f"ufdl-node: dataset: dataset folder {folder}: two files named 'x.png' "
                           "(cat/x.png, dog/x.png); dataset file names must differ")
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        assert await admin.request("POST", "/v1/datasets/list", json={}) == []


async def test_dataset_add_of_a_folder_that_does_not_exist_exits_2_with_one_line(server, tmp_path):
    """dataset add MISSING: exit 2, one line naming the folder, no traceback, nothing created."""
    missing = tmp_path / "no-such-folder"
    code, out, err = await cli(server, "dataset", "add", str(missing))
    assert (code, out) == (2, "")
    assert err == f"ufdl-node: dataset: dataset folder {missing}: not a directory\n"
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        assert await admin.request("POST", "/v1/datasets/list", json={}) == []


async def import_templates(server: EmbeddedServer) -> None:
    """The server offers the stock dogs_dummy templates, as a real server does."""
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        for name in (TRAIN, PREDICT):
            spec = registry.for_template(name, 1)
            assert spec is not None and spec.description is not None
            await admin.import_template(spec.description.import_spec(name))


def node_config(tmp_path: Path, server: EmbeddedServer) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'server_url = "{server.url}"\nusername = "worker"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'cache_dir = "{tmp_path / "cache"}"\ngpu_indices = [0]\npoll_interval_s = 0.2\n'
                    'log_level = "warning"\n')
    return path


async def run_daemon(config: Path) -> None:
    """`ufdl-node run --exit-when-idle` as the worker: it must run what is waiting and exit 0."""
    done = await asyncio.to_thread(ufdl_node, "run", "--config", str(config), "--exit-when-idle",
                                   env={"UFDL_NODE_PASSWORD": WORKER_PW})
    assert done.returncode == 0, done.stdout + done.stderr


# The stock dogs_dummy templates require frontend_metadata, as the real server's do.
NO_FRONTEND = ("--param", "frontend_metadata=null")


async def submit(server: EmbeddedServer, *args: str) -> int:
    code, out, err = await cli(server, "submit", *args)
    assert code == 0, out + err
    assert out.strip().isdigit() and f"job {out.strip()} created" in err, (out, err)  # the pk alone
    return int(out)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_dataset_add_submit_train_then_predict_on_its_model_through_the_daemon(server, tmp_path):
    """dataset add → submit train → daemon → submit predict --input model=job:N → daemon: labels stored."""
    await import_templates(server)
    folder = image_folder(tmp_path / "pets", {"dog": 3, "cat": 3})
    code, out, err = await cli(server, "dataset", "add", str(folder), "--domain", "ic")
    assert code == 0, err
    dataset = int(out.strip())
    config = node_config(tmp_path, server)

    train = await submit(server, TRAIN, "--input", f"dataset={dataset}", "--param", "factor=6", *NO_FRONTEND)
    await run_daemon(config)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        trained = await admin.get_job(train)
        assert trained["error_reason"] is None and trained["end_time"] is not None
        model_type = next(o["type"] for o in trained["outputs"] if o["name"] == "model")
        await admin.download_output(train, "model", model_type, tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        assert zf.read("model") == b"1.0"

    predict = await submit(server, PREDICT, "--input", f"model=job:{train}", "--input", f"dataset={dataset}",
                           *NO_FRONTEND)
    await run_daemon(config)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        predicted = await admin.get_job(predict)
        assert predicted["error_reason"] is None, predicted["error_reason"]
        assert {o["name"] for o in predicted["outputs"]} == {"predictions", "metadata", "log"}
        await admin.download_output(predict, "metadata", "JSON", tmp_path / "metadata.json")
    assert json.loads((tmp_path / "metadata.json").read_text())["job"]["num_correct"] == 6
    labels = await read(server, f"/v1/classify/datasets/{dataset}/categories")
    assert labels == {f"{label}{i}.png": [label] for label in ("dog", "cat") for i in range(3)}


async def test_submit_with_a_folder_for_the_dataset_creates_it_first(server, tmp_path):
    """submit TEMPLATE --input dataset=DIR: the dataset is made on the server and the job names it."""
    await import_templates(server)
    folder = image_folder(tmp_path / "pets", {"dog": 1})
    pk = await submit(server, TRAIN, "--input", f"dataset={folder}", *NO_FRONTEND)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        job = await admin.get_job(pk)
    dataset = job["input_values"]["dataset"]
    assert dataset["type"] == "PK<Dataset<Domain<'Image Classification'>>>"
    assert (await read(server, f"/v1/datasets/{dataset['value']}"))["name"] == "pets"


async def test_submit_with_a_dataset_folder_that_does_not_exist_exits_2_with_one_line(server, tmp_path):
    """--input dataset=DIR where DIR is missing: exit 2 naming it, no job created."""
    await import_templates(server)
    code, _out, err = await cli(server, "submit", TRAIN, "--input", "dataset=no-such-folder")
    assert code == 2
    assert err.strip() == "ufdl-node: submit: --input dataset=no-such-folder: no such folder, and not " \
        "the pk of a dataset"
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        assert await admin.list_jobs({}) == []


@pytest.mark.parametrize(("command", "forms"), [
    ("dry-run", ("dataset=DIR", "model=FILE", "model=job:N[/NAME]")),
    ("submit", ("dataset=DIR", "model=job:N[/NAME]")),
])
def test_input_help_names_the_local_forms_each_command_takes(command: str, forms: tuple[str, ...]) -> None:
    """`COMMAND --help` says which local things --input takes: a folder, a file, a job's output."""
    result = ufdl_node(command, "--help")
    assert result.returncode == 0, result.stderr
    options = result.stdout.split("\noptions:", 1)[1]
    text = " ".join(options.split("--input NAME=VALUE[:TYPE]", 1)[1].split("--param", 1)[0].split())
    for form in forms:
        assert form in text, text
