"""What every benchmark asks of the machine it runs on: a free loopback port, the load average."""

from __future__ import annotations

import socket
from pathlib import Path


def load() -> str:
    """The 1-minute load average, shown with each measurement: other work on the machine skews it."""
    try:
        return f" (load {Path('/proc/loadavg').read_text().split()[0]})"
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
