"""Atomic file writes: every output of the project (volumes, snapshots, results, figures)
goes through `atomic_path`, so a reader sees either the old file or the complete new one,
never a truncated file, even when a run is killed mid-write.

The temporary file lives beside the destination (same file system, so the final
`os.replace` is atomic), is named `.tmp-<random><suffix>` (the suffix is kept because some
writers, SimpleITK's among them, choose the format from it), and gets the permissions a
plainly created file would get (0666 minus the umask) before it is renamed: `mkstemp`
alone would leave it readable by its owner only.
"""
import json
import os
import re
import tempfile
from contextlib import contextmanager
from typing import Iterator

TMP_PREFIX = ".tmp-"
_SUFFIX = re.compile(r"((?:\.[A-Za-z0-9]+)+)$")


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _suffix(name: str) -> str:
    """'image_3.nii.gz' -> '.nii.gz'; 'step_0000100.pth' -> '.pth'; 'README' -> ''."""
    match = _SUFFIX.search(name)
    return match.group(1) if match else ""


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on
    failure (an exception in the block) it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=_suffix(os.path.basename(path)),
                                   dir=directory)
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb") as written:  # on disk before the rename, so a crash cannot
            os.fsync(written.fileno())    # leave the final name on an empty file
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(data: bytes, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(text: str, path: str) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def remove_stale_temporaries(directory: str) -> list:
    """Delete the `.tmp-*` files a killed writer left in `directory` (not recursive); returns
    the paths removed. Only call this where no other process is writing."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed
