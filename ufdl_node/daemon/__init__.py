"""The daemon: the supervisor, its slots and poller, and what they remember and report."""
