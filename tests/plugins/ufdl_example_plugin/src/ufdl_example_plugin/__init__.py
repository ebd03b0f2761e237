"""An example handler plugin: echoes its `message` parameter into an output."""

from __future__ import annotations

from ufdl_node.api import JobContext, Parameter, TemplateDescription, handler


@handler("ufdl_example_echo", versions=">=1",
         description=TemplateDescription(parameters=(Parameter("message", ("String",), "hello"),)))
async def echo(ctx: JobContext) -> None:
    """Upload the `message` parameter as the output `echo`."""
    ctx.progress(0.5)
    await ctx.upload("echo", "String", str(ctx.params["message"]).encode())
