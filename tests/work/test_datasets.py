"""A job's dataset from a loopback UFDL server: cache, archive, labels, bad input."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.work.datasets import clear_annotations, fetch_dataset
from ufdl_node.work.wai_options import split_schedule

from .conftest import Harness, sha, zip_bytes

IC_TYPE = "PK<Dataset<Domain<'Image Classification'>>>"
FILES = {"a.jpg": b"AAAA", "b.jpg": b"BBBB", "c.jpg": b"CCCC"}
LABELS = {"a.jpg": ["dog"], "b.jpg": ["cat"], "c.jpg": ["dog"]}


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_dataset_by_pk_gives_files_and_labels(ufdl: Harness, tmp_path: Path) -> None:
    """The files land in dest, verified, with the image-classification labels."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job" / "data",
                             cache_dir=tmp_path / "cache")
    assert ds.pk == 5 and ds.files == ("a.jpg", "b.jpg", "c.jpg") and ds.downloaded == 3
    assert {n: (ds.directory / n).read_bytes() for n in ds.files} == FILES
    assert ds.labels() == {"a.jpg": "dog", "b.jpg": "cat", "c.jpg": "dog"}


async def test_second_fetch_of_a_dataset_downloads_no_file(ufdl: Harness, tmp_path: Path) -> None:
    """Another job on the same dataset gets every file from the cache: no file request."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    access = ufdl.access()
    await fetch_dataset(access, 5, IC_TYPE, dest=tmp_path / "job1", cache_dir=tmp_path / "cache")
    assert ufdl.state.count("GET", r"/files/") == 3
    ds = await fetch_dataset(access, 5, IC_TYPE, dest=tmp_path / "job2", cache_dir=tmp_path / "cache")
    assert ufdl.state.count("GET", r"/files/") == 3
    assert ds.downloaded == 0
    assert (tmp_path / "job2" / "b.jpg").read_bytes() == b"BBBB"


async def test_cached_files_are_shared_read_only(ufdl: Harness, tmp_path: Path) -> None:
    """The job's files are links to read-only cached blobs (copies when asked)."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    blob = tmp_path / "cache" / "sha256" / sha(b"AAAA")[:2] / sha(b"AAAA")
    assert (ds.directory / "a.jpg").samefile(blob)
    assert blob.stat().st_mode & 0o222 == 0
    copied = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job2", cache_dir=tmp_path / "cache",
                                 copy=True)
    assert not (copied.directory / "a.jpg").samefile(blob)


async def test_dataset_by_name_and_by_object(ufdl: Harness, tmp_path: Path) -> None:
    """'name vN' and the object form find the same dataset as its pk."""
    ufdl.state.add_dataset(5, "dogs", FILES, version=1)
    ufdl.state.add_dataset(6, "dogs", {"z.jpg": b"Z"}, version=2)
    by_name = await fetch_dataset(ufdl.access(), "dogs v1", "Name<Dataset<Domain<'Image Classification'>>>",
                                  dest=tmp_path / "n", cache_dir=tmp_path / "cache")
    newest = await fetch_dataset(ufdl.access(), "dogs", "Name<Dataset<Domain<'Image Classification'>>>",
                                 dest=tmp_path / "m", cache_dir=tmp_path / "cache")
    by_object = await fetch_dataset(ufdl.access(), {"pk": 6, "name": "dogs", "version": 2}, IC_TYPE,
                                    dest=tmp_path / "o", cache_dir=tmp_path / "cache")
    assert (by_name.pk, newest.pk, by_object.pk) == (5, 6, 6)


async def test_missing_dataset_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A pk that names no dataset: 'dataset 42 not found'."""
    with pytest.raises(JobFailed, match=r"^dataset 42 not found$"):
        await fetch_dataset(ufdl.access(), 42, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c")


async def test_missing_dataset_name_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A name that matches no dataset fails the job naming it."""
    with pytest.raises(JobFailed, match=r"^dataset 'cats v3' not found$"):
        await fetch_dataset(ufdl.access(), "cats v3", "Name<Dataset<Domain<'Image Classification'>>>",
                            dest=tmp_path / "d", cache_dir=tmp_path / "c")


async def test_dataset_of_another_domain_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """An object-detection dataset for an image-classification template fails the job."""
    ufdl.state.add_dataset(7, "boxes", FILES, domain="od")
    with pytest.raises(JobFailed, match="is in domain Object Detection; this job needs Image Classification"):
        await fetch_dataset(ufdl.access(), 7, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    assert ufdl.state.count("GET", r"/files/") == 0


async def test_empty_dataset_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A dataset without files fails the job before anything is downloaded."""
    ufdl.state.add_dataset(8, "nothing", {})
    with pytest.raises(JobFailed, match=r"dataset 8 \(nothing v1\) is empty"):
        await fetch_dataset(ufdl.access(), 8, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c")


async def test_file_name_climbing_out_fails_and_writes_nothing(ufdl: Harness, tmp_path: Path) -> None:
    """A listed file named '../x' fails the job; no file is written anywhere."""
    ufdl.state.add_dataset(9, "evil", {"../x.jpg": b"X", "ok.jpg": b"O"})
    with pytest.raises(JobFailed, match="climbs out"):
        await fetch_dataset(ufdl.access(), 9, dest=tmp_path / "job" / "d", cache_dir=tmp_path / "c")
    assert _tree(tmp_path) == []


async def test_file_without_a_valid_sha256_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A record whose hash for a file is not a sha256 fails the job naming the file."""
    ufdl.state.add_dataset(9, "odd", {"a.jpg": b"A"})
    ufdl.state.listed_hashes[9] = {"a.jpg": "md5:1234"}
    with pytest.raises(JobFailed, match=r"'a\.jpg' has no valid sha256"):
        await fetch_dataset(ufdl.access(), 9, dest=tmp_path / "d", cache_dir=tmp_path / "c")


async def test_cut_file_download_is_retried_and_the_cache_stays_clean(ufdl: Harness, tmp_path: Path) -> None:
    """A file cut mid-way is fetched again; the cache holds only whole, verified blobs."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A" * 50_000})
    ufdl.state.cut("GET", r"/files/a\.jpg$", times=1)
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "cache")
    assert (ds.directory / "a.jpg").read_bytes() == b"A" * 50_000
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [sha(b"A" * 50_000)]


@pytest.mark.parametrize("filetype", ["zip", "tar.gz"])
async def test_archive_is_downloaded_and_extracted(ufdl: Harness, tmp_path: Path, filetype: str) -> None:
    """The server's archive (POST .../download) is unpacked; it asks for the raw files only."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job" / "data",
                             cache_dir=tmp_path / "cache", archive=filetype)
    assert ds.files == ("a.jpg", "b.jpg", "c.jpg") and ds.labels()["b.jpg"] == "cat"
    assert ufdl.state.bodies == [{"filetype": filetype}]
    assert _tree(tmp_path / "job") == ["data/a.jpg", "data/b.jpg", "data/c.jpg"]
    assert _tree(tmp_path / "cache") == []  # the archive itself is gone


async def test_archive_with_dotdot_member_fails_and_writes_nothing(ufdl: Harness, tmp_path: Path) -> None:
    """An archive member named '../../x' fails the job; no file outside, and none inside."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    ufdl.state.archive_override[5] = zip_bytes({"a.jpg": b"A", "../../x.jpg": b"X"})
    with pytest.raises(JobFailed, match="climbs out"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job" / "data", cache_dir=tmp_path / "c",
                            archive="zip")
    assert _tree(tmp_path) == []


async def test_archive_with_absolute_member_fails(ufdl: Harness, tmp_path: Path) -> None:
    """A tar member with an absolute name fails the job and is not written."""
    target = tmp_path / "abs.jpg"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(str(target))
        info.size = 1
        tf.addfile(info, io.BytesIO(b"X"))
    ufdl.state.add_dataset(5, "dogs", FILES)
    ufdl.state.archive_override[5] = buf.getvalue()
    with pytest.raises(JobFailed, match="absolute name"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "job", cache_dir=tmp_path / "c",
                            archive="tar.gz")
    assert not target.exists()


async def test_unknown_archive_type_fails_before_any_call(ufdl: Harness, tmp_path: Path) -> None:
    """filetype 'rar' is refused by the toolkit itself."""
    ufdl.state.add_dataset(5, "dogs", FILES)
    with pytest.raises(JobFailed, match=r"'rar' is not one of zip, tar\.gz"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "d", cache_dir=tmp_path / "c", archive="rar")
    assert ufdl.state.count("POST", "/download") == 0


async def test_listed_file_missing_on_the_server_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A file the record lists but the server cannot serve fails the job naming it."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A"})
    ufdl.state.listed_hashes[5] = {"ghost.jpg": sha(b"G")}
    with pytest.raises(JobFailed, match=r"file 'ghost\.jpg' not found on the server"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    assert not (tmp_path / "d" / "ghost.jpg").exists()


async def test_a_failed_fetch_leaves_only_whole_files_under_digest_names(ufdl: Harness,
                                                                         tmp_path: Path) -> None:
    """A file missing on the server fails the fetch: the cache keeps no staged or partial
    file, and every name it keeps is the sha256 of its bytes."""
    files = {f"f{i}.jpg": bytes([i]) * 1000 for i in range(6)}
    ufdl.state.add_dataset(5, "dogs", files)
    ufdl.state.listed_hashes[5] = {**{n: sha(b) for n, b in files.items()}, "ghost.jpg": sha(b"G")}
    with pytest.raises(JobFailed, match="ghost"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "d", cache_dir=tmp_path / "c", parallel=2)
    kept = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert all(p.name == sha(p.read_bytes()) for p in kept), kept


async def test_bare_file_names_are_downloaded_into_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A record listing names without hashes still gives the files (nothing to cache them by)."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A", "b.jpg": b"B"})
    ufdl.state.bare_names.add(5)
    ds = await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    assert ds.downloaded == 2 and (ds.directory / "b.jpg").read_bytes() == b"B"
    assert _tree(tmp_path / "c") == []


async def test_by_label_makes_a_folder_per_label(ufdl: Harness, tmp_path: Path) -> None:
    """by_label() lays the labelled files out as class folders; unlabelled ones stay out."""
    ufdl.state.add_dataset(5, "dogs", {**FILES, "u.jpg": b"U"}, categories=LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    layout = ds.by_label(tmp_path / "classes")
    assert _tree(tmp_path / "classes") == ["cat/b.jpg", "dog/a.jpg", "dog/c.jpg"]
    assert sorted(layout) == ["cat", "dog"]


async def test_label_that_is_no_folder_name_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A label such as '../up' cannot become a folder: JobFailed, nothing written outside."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories={"a.jpg": ["../up"]})
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    with pytest.raises(JobFailed, match="climbs out"):
        ds.by_label(tmp_path / "classes" / "x")
    assert not (tmp_path / "classes").exists() and not (tmp_path / "up").exists()


async def test_file_under_another_file_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """Names 'x' and 'x/y.jpg' cannot both be files: a clear JobFailed, nothing downloaded."""
    ufdl.state.add_dataset(5, "odd", {"x": b"X", "x/y.jpg": b"Y"})
    with pytest.raises(JobFailed, match="lies under the file 'x'"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    assert ufdl.state.count("GET", "/files/") == 0


async def test_clear_annotations_empties_the_labels(ufdl: Harness) -> None:
    """DELETE .../clear removes the dataset's categories and answers its record."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    record = await clear_annotations(ufdl.access(), 5)
    assert record["pk"] == 5 and ufdl.state.categories[5] == {}


async def test_clear_annotations_of_a_missing_dataset_fails_the_job(ufdl: Harness) -> None:
    """Clearing a dataset that does not exist: 'dataset 77 not found'."""
    with pytest.raises(JobFailed, match=r"^dataset 77 not found$"):
        await clear_annotations(ufdl.access(), 77)


# -- converted on the node (a template's dataset_options) -------------------------------------------

# The shipped mmclassification_0.25.0_resnet18_train definition's dataset_options default.
MMCLS_TRAIN = ["write-labels", "-f", "csv-headless", "-o", "labels.txt", "to-subdir-ic", "-o", ".",
               "--split-names", "train", "test", "val", "--split-ratios", "70", "15", "15"]
PETS = {f"{kind}{n:02}.png": f"{kind} {n}".encode() for kind in ("cat", "dog") for n in range(1, 11)}
PET_LABELS = {name: [name[:3]] for name in PETS}


def _mmcls_layout() -> list[str]:
    """Where wai.annotations puts PETS with MMCLS_TRAIN: the 70/15/15 cycle over the sorted names."""
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    return sorted([f"{cycle[i]}/{name[:3]}/{name}" for i, name in enumerate(sorted(PETS))] + ["labels.txt"])


async def test_options_are_converted_on_the_node_from_the_cached_files(ufdl: Harness, tmp_path: Path) -> None:
    """The MMClassification defaults: the raw files through the cache, the layout made by the node,
    no archive asked for; each image a link to its cached blob."""
    ufdl.state.add_dataset(5, "pets", PETS, categories=PET_LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job" / "data",
                             cache_dir=tmp_path / "cache", options=MMCLS_TRAIN)
    assert _tree(tmp_path / "job" / "data") == _mmcls_layout() == list(ds.files)
    assert (tmp_path / "job" / "data" / "labels.txt").read_bytes() == b"cat,dog"
    assert ufdl.state.count("POST", "/download") == 0 and ufdl.state.count("GET", "/files/") == 20
    image = tmp_path / "job" / "data" / ds.paths["dog07.png"]  # type: ignore[index]
    assert image.read_bytes() == b"dog 7" and image.samefile(tmp_path / "cache" / "sha256" / sha(b"dog 7")[:2]
                                                            / sha(b"dog 7"))
    assert [p.name for p in (tmp_path / "cache" / "archives").iterdir()] == []  # no scratch left


async def test_a_second_conversion_downloads_nothing_and_splits_the_same(ufdl: Harness,
                                                                        tmp_path: Path) -> None:
    """Another job on the same dataset and options: no file downloaded, the same split."""
    ufdl.state.add_dataset(5, "pets", PETS, categories=PET_LABELS)
    first = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job1", cache_dir=tmp_path / "c",
                                options=MMCLS_TRAIN)
    second = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job2", cache_dir=tmp_path / "c",
                                 options=MMCLS_TRAIN)
    assert second.downloaded == 0 and ufdl.state.count("GET", "/files/") == 20
    assert _tree(tmp_path / "job1") == _tree(tmp_path / "job2") and first.paths == second.paths


@pytest.mark.parametrize("filetype", ["zip", "tar.gz"])
async def test_options_with_the_archive_convert_its_raw_files(ufdl: Harness, tmp_path: Path,
                                                              filetype: str) -> None:
    """With archive=..., the server's archive of raw files is converted by the node: no
    annotations_args sent, the same layout as from the cache, nothing left in the cache."""
    ufdl.state.add_dataset(5, "pets", PETS, categories=PET_LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job", cache_dir=tmp_path / "c",
                             options=MMCLS_TRAIN, archive=filetype)
    assert ufdl.state.bodies == [{"filetype": filetype}]
    assert _tree(tmp_path / "job") == _mmcls_layout() and ds.downloaded == 1
    assert (tmp_path / "job" / ds.paths["cat03.png"]).read_bytes() == b"cat 3"  # type: ignore[index]
    assert _tree(tmp_path / "c") == []


async def test_annotations_args_is_the_older_name_of_options(ufdl: Harness, tmp_path: Path) -> None:
    """annotations_args=[...] converts on the node too (the server is never asked to)."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c",
                             annotations_args=["to-subdir-ic", "-o", "."])
    assert list(ds.files) == ["cat/b.jpg", "dog/a.jpg", "dog/c.jpg"] == _tree(tmp_path / "d")
    assert ufdl.state.count("POST", "/download") == 0


async def test_converted_files_are_copies_when_asked(ufdl: Harness, tmp_path: Path) -> None:
    """copy=True: the converted layout's files are the handler's own, not links into the cache."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c",
                        options=["to-subdir-ic", "-o", "."], copy=True)
    assert (tmp_path / "d" / "dog" / "a.jpg").stat().st_nlink == 1
    assert (tmp_path / "d" / "dog" / "a.jpg").read_bytes() == b"AAAA"


async def test_bare_file_names_convert_and_leave_no_scratch(ufdl: Harness, tmp_path: Path) -> None:
    """Files listed without hashes are fetched into a scratch folder, converted, and the folder goes."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    ufdl.state.bare_names.add(5)
    await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c",
                        options=["to-subdir-ic", "-o", "out"])
    assert _tree(tmp_path / "d") == ["out/cat/b.jpg", "out/dog/a.jpg", "out/dog/c.jpg"]
    assert _tree(tmp_path / "c") == []


async def test_by_label_follows_the_converted_layout(ufdl: Harness, tmp_path: Path) -> None:
    """by_label() on a converted dataset finds each image where the conversion put it."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c",
                             options=MMCLS_TRAIN)
    ds.by_label(tmp_path / "classes")
    assert _tree(tmp_path / "classes") == ["cat/b.jpg", "dog/a.jpg", "dog/c.jpg"]


STEP = "template 'mmcls_train', dataset step: dataset_options"


async def test_unsupported_options_fail_before_any_request(ufdl: Harness, tmp_path: Path) -> None:
    """--seed is no option of to-subdir-ic: one line naming the step and the option; no call made."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    with pytest.raises(JobFailed) as info:
        await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "d", cache_dir=tmp_path / "c",
                            options=["to-subdir-ic", "--seed", "1"], step=STEP)
    assert info.value.reason == (f"{STEP}: option '--seed' of stage to-subdir-ic is not supported by "
                                 "the node (it knows -o, --output, --split-names, --split-ratios, "
                                 "--no-interleave)")
    assert ufdl.state.seen == [] and _tree(tmp_path) == []


async def test_an_image_classification_writer_on_an_object_detection_dataset_fails(
        ufdl: Harness, tmp_path: Path) -> None:
    """to-subdir-ic on an object-detection dataset: one line saying so; no file fetched or written."""
    ufdl.state.add_dataset(7, "boxes", FILES, domain="od")
    with pytest.raises(JobFailed, match=r"^template 'mmcls_train', dataset step: dataset_options: stage "
                                        r"'to-subdir-ic' writes another domain than the dataset's "
                                        r"\(Object Detection\)"):
        await fetch_dataset(ufdl.access(), 7, dest=tmp_path / "d", cache_dir=tmp_path / "c",
                            options=["to-subdir-ic", "-o", "."], step=STEP)
    assert ufdl.state.count("GET", "/files/") == 0 and _tree(tmp_path) == []


async def test_a_label_that_cannot_be_a_folder_fails_before_any_file(ufdl: Harness, tmp_path: Path) -> None:
    """A category '../../etc' for to-subdir-ic: JobFailed naming it; nothing fetched, nothing written."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories={"a.jpg": ["../../etc"]})
    with pytest.raises(JobFailed, match=r"^template .*: the label of 'a\.jpg', '\.\./\.\./etc' cannot be"):
        await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job" / "d", cache_dir=tmp_path / "c",
                            options=["to-subdir-ic", "-o", "."], step=STEP)
    assert ufdl.state.count("GET", "/files/") == 0
    assert _tree(tmp_path) == [] and not (tmp_path / "etc").exists()
