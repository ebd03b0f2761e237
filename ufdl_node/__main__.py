"""`python -m ufdl_node` is the `ufdl-node` command."""

from .cli import main

raise SystemExit(main())
