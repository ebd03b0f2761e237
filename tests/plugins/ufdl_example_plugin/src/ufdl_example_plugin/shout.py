"""A second entry point of the example plugin, naming a list of handler specs."""

from __future__ import annotations

from ufdl_node.api import JobContext, handler


@handler("ufdl_example_shout")
async def shout(ctx: JobContext) -> None:
    """Upload the `message` parameter in capitals as the output `shout`."""
    await ctx.upload("shout", "String", str(ctx.params.get("message", "")).upper().encode())


HANDLERS = [shout]
