"""A job's dataset from a loopback UFDL server: cache, archive, labels, bad input."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.work.datasets import clear_annotations, fetch_dataset, store_categories

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
    """The server's archive (POST .../download) is unpacked; annotations_args are passed on."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories=LABELS)
    ds = await fetch_dataset(ufdl.access(), 5, IC_TYPE, dest=tmp_path / "job" / "data",
                             cache_dir=tmp_path / "cache", archive=filetype,
                             annotations_args=["to-subdir-ic", "-o", "."])
    assert ds.files == ("a.jpg", "b.jpg", "c.jpg") and ds.labels()["b.jpg"] == "cat"
    assert ufdl.state.bodies[0] == {"filetype": filetype,
                                    "params": {"annotations_args": ["to-subdir-ic", "-o", "."]}}
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


async def test_store_categories_adds_one_call_per_label(ufdl: Harness) -> None:
    """Predictions go back as one categories PATCH (add) per label; empty ones are skipped."""
    ufdl.state.add_dataset(5, "dogs", FILES, categories={})
    calls = await store_categories(ufdl.access(), 5, {"a.jpg": "dog", "b.jpg": "cat", "c.jpg": "dog",
                                                      "d.jpg": ""})
    assert calls == 2
    assert ufdl.state.categories[5] == {"a.jpg": ["dog"], "b.jpg": ["cat"], "c.jpg": ["dog"]}
    assert ufdl.state.bodies == [{"method": "add", "images": ["b.jpg"], "categories": ["cat"]},
                                 {"method": "add", "images": ["a.jpg", "c.jpg"], "categories": ["dog"]}]


async def test_listed_file_missing_on_the_server_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A file the record lists but the server cannot serve fails the job naming it."""
    ufdl.state.add_dataset(5, "dogs", {"a.jpg": b"A"})
    ufdl.state.listed_hashes[5] = {"ghost.jpg": sha(b"G")}
    with pytest.raises(JobFailed, match=r"file 'ghost\.jpg' not found on the server"):
        await fetch_dataset(ufdl.access(), 5, dest=tmp_path / "d", cache_dir=tmp_path / "c")
    assert not (tmp_path / "d" / "ghost.jpg").exists()


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
