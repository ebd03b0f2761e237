"""The handler decorator, specs, version ranges, template descriptions and failure descriptions."""

from __future__ import annotations

import asyncio

import pytest

from ufdl_node.api import (
    HandlerSpec,
    JobContext,
    JobFailed,
    Needs,
    Parameter,
    RetryJob,
    TemplateDescription,
    VersionRange,
    describe_failure,
    format_traceback,
    handler,
)


async def _run(ctx: JobContext) -> None:
    """A handler body."""


def test_decorator_builds_a_spec() -> None:
    """@handler turns the function into a HandlerSpec with every declared field."""
    needs = Needs(gpu=True, min_gpu_mem_bytes=2**30)
    description = TemplateDescription(job_type="Train")
    spec = handler("a", "b", versions=">=2", needs=needs, description=description, name="mine")(_run)
    assert isinstance(spec, HandlerSpec)
    assert (spec.name, spec.templates, spec.versions) == ("mine", ("a", "b"), ">=2")
    assert spec.needs is needs and spec.description is description and spec.func is _run
    assert spec.source == __file__


def test_name_defaults_to_first_template() -> None:
    """Without name=, a handler is named after its first template."""
    assert handler("train_x", "train_y")(_run).name == "train_x"


def test_spec_is_awaitable_with_a_context() -> None:
    """A decorated function can still be called with a context."""
    spec = handler("a")(_run)
    coro = spec(None)  # type: ignore[arg-type]
    assert asyncio.iscoroutine(coro)
    coro.close()


def test_decorator_refuses_a_sync_function() -> None:
    """A handler must be an async function."""
    with pytest.raises(TypeError, match="must be an async function"):
        handler("a")(lambda ctx: None)  # type: ignore[arg-type,return-value]


def test_decorator_refuses_no_template() -> None:
    """A handler must name at least one template."""
    with pytest.raises(ValueError, match="at least one job-template name"):
        handler()


def test_decorator_refuses_a_bad_version_range() -> None:
    """A malformed version range fails when the plugin is imported, naming the part."""
    with pytest.raises(ValueError, match="bad version constraint '~2'"):
        handler("a", versions=">=1,~2")


@pytest.mark.parametrize(("text", "inside", "outside"), [
    (None, [0, 1, 99], []),
    (">=1,<3", [1, 2], [0, 3]),
    (">2", [3, 10], [2]),
    ("<=2", [0, 2], [3]),
    ("==4", [4], [3, 5]),
    ("4", [4], [3]),
    (">=1, !=2", [1, 3], [2]),
])
def test_version_range_membership(text: str | None, inside: list[int], outside: list[int]) -> None:
    """Version ranges accept exactly the versions their constraints allow."""
    vr = VersionRange.parse(text)
    assert all(v in vr for v in inside) and not any(v in vr for v in outside)


@pytest.mark.parametrize(("a", "b", "overlap"), [
    (None, ">=5", True),
    (">=1,<3", ">=3", False),
    (">=1,<3", ">=2,<9", True),
    ("==2", "!=2", False),
    ("==2", "==3", False),
    (">=1,<=2", "!=1,!=2", False),
    ("<3", ">1", True),
])
def test_version_range_overlap(a: str | None, b: str | None, overlap: bool) -> None:
    """Two ranges overlap exactly when some version lies in both."""
    assert VersionRange.parse(a).overlaps(VersionRange.parse(b)) is overlap
    assert VersionRange.parse(b).overlaps(VersionRange.parse(a)) is overlap


def test_serves_checks_name_and_version() -> None:
    """serves() needs the template name and a version inside the range."""
    spec = handler("t", versions="<3")(_run)
    assert spec.serves("t", 2) and not spec.serves("t", 3) and not spec.serves("u", 1)


def test_import_spec_matches_the_servers_format() -> None:
    """import_spec() gives the body of POST /v1/job-templates/import as the real server takes it: the
    domain by its code, the old type names (Integer, String) as the server's (int, str)."""
    desc = TemplateDescription(job_type="Train", domain="Image Classification", framework="demo:1.0",
                               inputs={"dataset": "PK<Dataset<Domain<'Image Classification'>>>"},
                               parameters=(Parameter("epochs", ("Integer",), 5, "how many"),
                                           Parameter("seed", ("Integer",), const=True, default=1),
                                           Parameter("name", ("String",))),
                               description="demo")
    spec = desc.import_spec("demo_train", 2)
    assert spec["name"] == "demo_train" and spec["version"] == 2 and spec["description"] == "demo"
    assert spec["domain"] == "ic"
    specific = spec["specific"]
    assert specific["job_type"] == "Train<Domain<'Image Classification'>, Framework<'demo', '1.0'>>"
    assert set(specific) == {"job_type", "executor_class", "required_packages", "parameters"}
    assert specific["parameters"] == {
        "epochs": {"types": ["int"], "help": "how many", "default": 5, "default_type": "int"},
        "seed": {"types": ["int"], "help": "", "default": 1, "default_type": "int", "const": True},
        "name": {"types": ["str"], "help": ""},
    }


@pytest.mark.parametrize("types, problem", [(("Integr",), "unknown type name 'Integr'"),
                                            (("Array<Strin>",), "unknown type name 'Strin'"),
                                            (("PK<Dataset",), "bracketed")])
def test_import_spec_refuses_an_unknown_type_in_one_line(types: tuple[str, ...], problem: str) -> None:
    """A parameter of a type the server does not know is a one-line ValueError naming it, before
    any server is asked."""
    desc = TemplateDescription(parameters=(Parameter("p", types, help="p"),))
    with pytest.raises(ValueError) as e:
        desc.import_spec("t")
    assert problem in str(e.value) and "parameter 'p'" in str(e.value) and "\n" not in str(e.value)


def test_describe_failure_of_job_failed() -> None:
    """JobFailed gives its reason and no retry."""
    assert describe_failure(JobFailed("no  data\nat all")) == ("no data at all", False)


def test_describe_failure_of_retry_job() -> None:
    """RetryJob gives its reason and asks for a retry."""
    assert describe_failure(RetryJob("GPU busy")) == ("GPU busy", True)


def test_describe_failure_of_another_exception() -> None:
    """Any other exception gives type, message, handler and where it was raised."""
    try:
        raise ValueError("bad\nthing")
    except ValueError as e:
        reason, retry = describe_failure(e, "demo_train")
    assert reason.startswith("ValueError: bad thing (in handler demo_train at test_api.py:")
    assert retry is False


def test_describe_failure_names_the_handlers_line_not_ufdl_nodes(tmp_path) -> None:
    """An exception raised inside ufdl-node (or the standard library) on the handler's behalf is placed
    at the handler's line that made the call, never at an internal frame such as transport.py's."""
    (tmp_path / "my_handler.py").write_text(
        "from ufdl_node.api import safe_file_name\n\n\n"
        "def run(ctx):\n"
        "    return safe_file_name(None)\n")
    from ufdl_node.registry import load_module_file

    module = load_module_file(tmp_path / "my_handler.py")
    try:
        module.run(None)
    except TypeError as e:
        reason, _ = describe_failure(e, "mine")
    assert reason.endswith("(in handler mine at my_handler.py:5)"), reason


def test_describe_failure_of_a_full_disk_is_a_retry(tmp_path) -> None:
    """ENOSPC, raised or behind another exception, is the node's disk: worth a retry elsewhere."""
    try:
        with open("/dev/full", "wb") as f:
            f.write(b"x")
    except OSError as e:
        reason, retry = describe_failure(e, "demo_train")
    assert reason.startswith("the node's disk is full: OSError: [Errno 28] No space left on device")
    assert retry is True
    try:
        try:
            (tmp_path / "f").write_bytes(b"x")
            raise OSError(28, "No space left on device")
        except OSError as e:
            raise RuntimeError("saving the model failed") from e
    except RuntimeError as e:
        assert describe_failure(e)[1] is True
    assert describe_failure(OSError(2, "No such file"))[1] is False


def test_format_traceback_shows_the_raise() -> None:
    """format_traceback() gives the whole traceback as text."""
    try:
        raise KeyError("epochs")
    except KeyError as e:
        text = format_traceback(e)
    assert "Traceback" in text and "KeyError: 'epochs'" in text and "test_format_traceback" in text
