"""The README's Train → Predict walk-through, run by bash as printed: on throw-away servers
(dry-run), and on an embedded server with a worker, where the predict job's labels end up in the
dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ..handlers.images import image_folder
from .readme import block, free_port, run_as_printed

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_dry_run_walk_through_trains_then_predicts(tmp_path: Path) -> None:
    """The dry-run block: train on the folder, then predict with the model file it saved."""
    image_folder(tmp_path / "pets", {"dog": 5, "cat": 3})
    out, _ = run_as_printed(block("dry-run-walk-through"), tmp_path)
    assert out.count("FINISHED") == 2, out
    assert list((tmp_path / "dry-run").glob("*/predictions.*")), out


@pytest.mark.timeout(240)
def test_server_walk_through_stores_the_predictions_in_the_dataset(tmp_path: Path) -> None:
    """The server block, as printed: templates imported, the folder a dataset, train and predict
    FINISHED through a worker; the dataset then holds one label per image (the predictions)."""
    image_folder(tmp_path / "pets", {"dog": 5, "cat": 3})
    port = free_port()
    lines = block("walk-through")
    # Before the block stops the server: the dataset's labels, read through the API as admin.
    read = ("python -c 'import asyncio, json, os, sys; from ufdl_node.client import UfdlClient\n"
            "async def main():\n"
            "    url = os.environ[\"UFDL_NODE_SERVER_URL\"]\n"
            "    async with UfdlClient(url, \"admin\", \"admin-secret\") as c:\n"
            "        print(\"LABELS=\" + json.dumps(await c.request(\"GET\", "
            "f\"/v1/classify/datasets/{sys.argv[1]}/categories\")))\n"
            "asyncio.run(main())' $DATASET")
    # The worker starts before the jobs are submitted: at the default poll interval (10 s) it
    # waited up to 10 s for each of the two; the walk-through's steps do not depend on it.
    fast_poll = {"UFDL_NODE_POLL_INTERVAL_S": "0.5", "UFDL_NODE_POLL_JITTER_S": "0.1"}
    out, err = run_as_printed([*lines[:-1], read, lines[-1]], tmp_path, port=port, env_extra=fast_poll)
    assert len(re.findall(r"job \d+: FINISHED", out)) == 2, out + err
    found = re.search(r"^LABELS=(.*)$", out, re.M)
    assert found, out
    labels = json.loads(found.group(1))
    assert sorted(labels) == sorted(p.name for p in (tmp_path / "pets").rglob("*.png")), labels
    assert all(len(v) == 1 and v[0] in ("dog", "cat") for v in labels.values()), labels
