"""Writing a run's small text files (metrics, records, settings) so that a reader never sees half of one."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_text_atomic"]


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it that then replaces it, so that a process killed
    while writing leaves the previous file whole. The text is written as given (no newline translation). A write or
    rename that fails removes the temporary file, as :func:`ffkit.train.save_checkpoint` does."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", newline="") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
