"""Image-classification labels written with the calls the real UFDL server answers today.

The backend's ``CategoriesViewSet`` (``ufdl-image-classification-app``) and
``ClearDatasetViewSet`` (``ufdl-core-app``), as the python client calls them
(``ufdl.pythonclient.functional.image_classification.dataset``)::

  add     PATCH  /v1/classify/datasets/{pk}/categories
                 {"method": "add", "images": [...], "categories": [...]}
  remove  PATCH  /v1/classify/datasets/{pk}/categories
                 {"method": "remove", "images": [...], "categories": [...]}
  set     POST   /v1/classify/datasets/{pk}/categories  {file: [label, ...], ...}
          (each named file's labels become exactly its list; ``[]`` removes them all;
          files not named keep theirs)
  clear   DELETE /v1/datasets/{pk}/clear  (every annotation of the dataset: its labels)

Add and remove answer just the changes made, are no-ops for what is already so,
and so are safe to repeat (retried like any read). The old body ``POST {"images",
"categories"}`` is refused by the real server and is never sent from here.

:func:`store_predictions` writes a predict job's labels back without losing any:
it clears the dataset first only when asked (``clear=True``); otherwise it changes
only the predicted files, each to exactly its predicted label, and leaves every
other file's labels alone. It adds before it removes, so that at every moment a
predicted file holds its old labels, its new one, or both, never none. A failure
part-way fails the job with one line; what is already done stays done: labels
added stay, old labels not yet removed stay (a file may then hold its old and
its new label), and a clear cannot be undone (the dataset's earlier labels are
gone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import JobFailed, ServerError
from ..logs import one_line
from .datasets import clear_annotations, fetch_categories
from .server_access import ServerAccess

CATEGORY_PREFIXES = {"ic": "/v1/classify/datasets", "sc": "/v1/spectra/datasets"}


def categories_path(pk: int, domain: str = "ic") -> str:
    """The labels resource of dataset `pk`: image classification (``ic``) or spectrum
    classification (``sc``, the same ``CategoriesViewSet`` under ``/v1/spectra``)."""
    return f"{CATEGORY_PREFIXES[domain]}/{pk}/categories"


def _names(values: Iterable[str], what: str) -> list[str]:
    """`values` as a sorted list of distinct non-empty strings (the server refuses "")."""
    given = list(values)
    if any(not isinstance(v, str) or not v for v in given):
        raise JobFailed(f"{what}: every name must be a non-empty string")
    return sorted(set(given))


async def _modify(access: ServerAccess, pk: int, method: str, images: Iterable[str],
                  labels: Iterable[str], domain: str = "ic") -> dict[str, list[str]]:
    image_list, label_list = _names(images, "images"), _names(labels, "labels")
    if not image_list or not label_list:
        return {}  # what the real server answers too, without the call
    reply = await access.json("PATCH", categories_path(pk, domain),
                              json={"method": method, "images": image_list, "categories": label_list},
                              what=f"dataset {pk}: {method} labels {', '.join(label_list)}")
    return reply if isinstance(reply, dict) else {}


async def add_labels(access: ServerAccess, pk: int, images: Iterable[str],
                     labels: Iterable[str], *, domain: str = "ic") -> dict[str, list[str]]:
    """Give every image of `images` every label of `labels` (``PATCH {"method": "add"}``);
    the labels that were new, by image."""
    return await _modify(access, pk, "add", images, labels, domain)


async def remove_labels(access: ServerAccess, pk: int, images: Iterable[str],
                        labels: Iterable[str], *, domain: str = "ic") -> dict[str, list[str]]:
    """Take every label of `labels` from every image of `images` (``PATCH {"method": "remove"}``);
    the labels that were there, by image."""
    return await _modify(access, pk, "remove", images, labels, domain)


async def set_labels(access: ServerAccess, pk: int,
                     labels: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Make each named file's labels exactly its list (``POST {file: [label, ...]}``; an empty
    list removes that file's labels); files not named keep theirs. What the server set."""
    body = {name: _names(values, f"labels of {name!r}") for name, values in labels.items()}
    if not body:
        return {}
    reply = await access.json("POST", categories_path(pk), json=body,
                              what=f"dataset {pk}: set the labels of {len(body)} file(s)")
    return reply if isinstance(reply, dict) else {}


async def clear_labels(access: ServerAccess, pk: int) -> None:
    """Remove every label (every annotation) of dataset `pk` (``DELETE /v1/datasets/{pk}/clear``).
    Cannot be undone."""
    await clear_annotations(access, pk)


@dataclass(frozen=True)
class LabelChanges:
    """What makes each predicted file hold exactly its prediction: the images to add each
    label to, and the images to remove each label from (label → sorted images)."""

    add: dict[str, list[str]]
    remove: dict[str, list[str]]

    @property
    def calls(self) -> int:
        """The calls the changes take (one per label added, one per label removed)."""
        return len(self.add) + len(self.remove)


def plan_predictions(current: Mapping[str, Iterable[str]],
                     predictions: Mapping[str, str | None]) -> LabelChanges:
    """The changes from the labels `current` (file → labels) to each predicted file holding
    just its prediction. A file without a prediction (None or "") keeps its labels, and so
    does every file not in `predictions`."""
    add: dict[str, set[str]] = {}
    remove: dict[str, set[str]] = {}
    for image, label in predictions.items():
        if not label:
            continue
        held = set(current.get(image, ()))
        if label not in held:
            add.setdefault(label, set()).add(image)
        for old in held - {label}:
            remove.setdefault(old, set()).add(image)
    return LabelChanges({k: sorted(v) for k, v in sorted(add.items())},
                        {k: sorted(v) for k, v in sorted(remove.items())})


async def fetch_labels(access: ServerAccess, pk: int, domain: str = "ic") -> dict[str, list[str]]:
    """The labels of dataset `pk` ({file: [category, ...]}) in `domain` (``ic`` or ``sc``)."""
    if domain == "ic":
        return await fetch_categories(access, pk)
    reply = await access.get(categories_path(pk, domain), what=f"dataset {pk}: categories")
    if not isinstance(reply, dict) or not all(isinstance(v, list) for v in reply.values()):
        raise JobFailed(f"dataset {pk}: the categories are not {{file: [category]}}")
    return {str(name): [str(c) for c in cats] for name, cats in reply.items()}


async def store_predictions(access: ServerAccess, pk: int, predictions: Mapping[str, str | None], *,
                            clear: bool = False, domain: str = "ic") -> int:
    """Write `predictions` (file → label, None or "" for none) into dataset `pk`; the calls made.

    With `clear`, every label of the dataset is removed first (``DELETE .../clear``, as the
    stock launcher does when it predicts), then the predictions added. Without it, each
    predicted file ends up holding exactly its prediction (added first, then its other
    labels removed) and every other file keeps its labels; a second predict therefore
    replaces the first's labels, with nothing duplicated. A failure part-way fails the
    job with one line saying how far it got (see the module's notes on what stays).
    """
    done = 0
    try:
        if clear:
            await clear_labels(access, pk)
            done += 1
            current: Mapping[str, Iterable[str]] = {}
        else:
            current = await fetch_labels(access, pk, domain)
        changes = plan_predictions(current, predictions)
        for label, images in changes.add.items():
            await add_labels(access, pk, images, [label], domain=domain)
            done += 1
        for label, images in changes.remove.items():
            await remove_labels(access, pk, images, [label], domain=domain)
            done += 1
    except (ServerError, JobFailed) as e:
        raise JobFailed(_stopped(pk, clear, done, e)) from None
    return done


def _stopped(pk: int, clear: bool, done: int, error: Any) -> str:
    kept = ("the dataset's earlier labels were cleared; " if clear and done else "")
    return (f"dataset {pk}: storing the predictions stopped after {done} label call(s): "
            f"{one_line(error, 160)} ({kept}labels already written stay)")
