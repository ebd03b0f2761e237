"""`python -m ufdl_node` is the `ufdl-node` command."""

from .cli.main import main

raise SystemExit(main())
