"""Writing files so that a reader, or a process killed halfway, never sees half of one."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

from jax_dcgan.common.errors import UserError

__all__ = ["atomic_write", "write_text"]


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` to write to; renamed over `path` if the block succeeds,
    removed if it fails. `suffix` keeps an extension for writers that go by it (PIL, numpy)."""
    if os.path.isdir(path):
        raise UserError(f"{path!r} is a directory; give the name of a file to write.")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot write {path!r}: its folder {folder!r} cannot be created "
                        f"({e.strerror}).") from None
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write(text)
