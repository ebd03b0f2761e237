"""The handler plugin API: the only module a handler imports.

A handler is an ``async def`` that takes a :class:`JobContext`, registered for
one or more job-template names with :func:`handler`::

    from ufdl_node.api import JobContext, JobFailed, handler

    @handler("my_train", versions=">=1,<3")
    async def run(ctx: JobContext) -> None:
        epochs = ctx.params["epochs"]
        ...
        ctx.progress(0.5, loss=0.3)
        await ctx.upload("model", "Blob", ctx.work_dir / "model.bin")

Handlers report failure by raising: :class:`JobFailed` for a clean error,
:class:`RetryJob` for a transient one (the job is handed back and runs again);
any other exception fails the job with a one-line reason and the traceback in
the job log.

Where handlers come from (see :mod:`ufdl_node.registry`): every ``*.py`` file
(not starting with ``_``) in a handler directory, and entry points in the group
``ufdl_node.handlers``. A module is scanned for :class:`HandlerSpec` objects
(what :func:`handler` returns); a module may also define
``def handlers(settings) -> Iterable[HandlerSpec]`` to make handlers from the
node's settings at load time (the built-in ``command`` handler does this).

The work a UFDL job asks for goes through the context too (:mod:`.toolkit`):
``await ctx.dataset()`` (a :class:`Dataset`), ``await ctx.model()`` (a
:class:`Model`), ``await ctx.docker_image(param)``, ``await
ctx.pretrained_model(param)``, ``ctx.expand(body)``, ``await ctx.upload_zip(...)``,
``await ctx.upload_metadata(...)``, ``await ctx.store_predictions(...)``, and any
other call through ``ctx.server`` (a :class:`ServerAccess`; a refusal raises
:class:`NotFound`, :class:`PermissionDenied` or another :class:`RefusedError`).
"""


from ..errors import JobFailed, NotFound, PermissionDenied, PluginError, RefusedError, RetryJob
from ..work import Dataset, Model, ServerAccess
from .context import JobContext, describe_failure, format_traceback
from .jobio import JobIO
from .spec import (
    MISSING,
    HandlerFunc,
    HandlerSpec,
    Needs,
    Parameter,
    TemplateDescription,
    VersionRange,
    handler,
    replace_spec,
)
from .toolkit import safe_file_name
from .values import Value, parse_value, resolve_inputs, resolve_parameters

__all__ = [
    "MISSING",
    "Dataset",
    "HandlerFunc",
    "HandlerSpec",
    "JobContext",
    "JobFailed",
    "JobIO",
    "Model",
    "Needs",
    "NotFound",
    "Parameter",
    "PermissionDenied",
    "PluginError",
    "RefusedError",
    "RetryJob",
    "ServerAccess",
    "TemplateDescription",
    "Value",
    "VersionRange",
    "describe_failure",
    "format_traceback",
    "handler",
    "parse_value",
    "replace_spec",
    "resolve_inputs",
    "resolve_parameters",
    "safe_file_name",
]
