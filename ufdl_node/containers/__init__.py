"""Containers below the daemon: ``spec`` says what a container is made of (mounts, labels, log
cursors), ``engine`` runs it through Docker (aiodocker). ``ufdl_node.daemon.containers`` builds on
both to run one job in a container."""
