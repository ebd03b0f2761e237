"""The work toolkit: what a UFDL job works on, as the real server offers it.

- :mod:`.server_access`: :class:`ServerAccess`, calls to any server resource with bounded retries
  (JSON, or streamed to a file that is renamed into place only when complete);
- :mod:`.datasets`: a job's dataset (files cached by sha256, or the server's archive) and
  its image-classification labels;
- :mod:`.wai_options`, :mod:`.convert`: a template's ``dataset_options`` (wai.annotations
  writer options) read, and the dataset converted on the node into that layout (the
  writers: :mod:`.convert` for image and spectrum classification, :mod:`.convert_od`,
  :mod:`.tfrecords` and :mod:`.masks` for object detection, :mod:`.convert_sp` for speech,
  on :mod:`.layouts`);
- :mod:`.labels`: image-classification labels written with the real server's calls (add,
  remove, set, clear) and a predict job's labels stored back without losing any;
- :mod:`.records`: Docker-image and pretrained-model records, a Predict job's model;
- :mod:`.archives`: safe extraction and deterministic zips;
- :mod:`.expand`: ``${name}`` expansion of a template's ``body``;
- :mod:`.outputs`: a zipped ``model`` (or predictions) and the ``metadata`` output.

(A template's own computations live beside its handler: ``handlers/_dogs_dummy_model.py``.)

Handlers reach these through their job context; nothing here imports the daemon but its one
backoff rule (:mod:`ufdl_node.backoff`, a leaf module), so that every retry waits alike.
"""

from .archives import extract, zip_directory, zip_files
from .datasets import (
    Dataset,
    clear_annotations,
    dataset_record,
    fetch_categories,
    fetch_dataset,
)
from .expand import expand
from .labels import add_labels, clear_labels, remove_labels, set_labels, store_predictions
from .outputs import upload_metadata, upload_zip, write_json
from .records import Model, docker_image, fetch_model, pretrained_model
from .server_access import ServerAccess, ServerIO

__all__ = [
    "Dataset", "Model", "ServerAccess", "ServerIO", "add_labels",
    "clear_annotations", "clear_labels", "dataset_record",
    "docker_image", "expand", "extract", "fetch_categories", "fetch_dataset", "fetch_model",
    "pretrained_model", "remove_labels", "set_labels", "store_predictions", "upload_metadata",
    "upload_zip", "write_json", "zip_directory", "zip_files",
]
