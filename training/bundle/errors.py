"""The one error of the contract: a bundle that must not be served, and why."""

from __future__ import annotations

from pathlib import Path


class BundleError(Exception):
    """A bundle that must not be served; the message names the cause."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason
