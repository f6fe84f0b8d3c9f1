"""What the tests' private brokers share: a context manager over their process, and their logs' tail."""

from __future__ import annotations

from pathlib import Path
from typing import Self


class BrokerProcess:
    """A private broker's process, for ``with``; subclasses give ``start``, ``stop``, ``port``, ``running``
    and ``log_paths``."""

    def log_paths(self) -> list[Path]:
        """The broker's log files, oldest lines first."""
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its logs, on one line."""
        text = "".join(path.read_text(errors="replace") for path in self.log_paths() if path.exists())
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(127.0.0.1:{self.port}, running={self.running})"
