"""The chaos soak: its `soak` marker is declared in pyproject.toml (the short variant runs with the
unit tests, `make soak` the long one)."""
