"""The loopback port for each server the slow lane starts (MLflow, JupyterLab, Spark, serve,
containers): one the kernel hands out free. Another process may take it between this check and
the server's bind, which is rare on loopback; a server that cannot bind fails its test loudly."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
