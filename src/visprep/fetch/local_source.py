"""Local files: file:// URLs and bare paths, behind a path policy and an open that reads regular files only."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from urllib.parse import urlsplit
from urllib.request import url2pathname

from visprep.fetch.settings import FetchSettings
from visprep.fetch.source import AttemptOutcome, read_image_body

SYSTEM_TREES = ("/proc", "/sys", "/dev")
"""Trees never read, whatever the policy: their "files" are process state, kernel knobs and devices."""

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO or device swapped in after the check cannot block the open
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)  # the path is already resolved: a symlink here appeared after the check
)
_FD_LINKS = "/proc/self/fd"


class LocalFileSource:
    """Reads file:// URLs (host empty or "localhost", path percent-decoded) and bare local paths (as given).

    A path is checked before it is opened: `FetchSettings.local_paths` (with the caller's `local_roots`), the
    system trees (/proc, /sys, /dev) and the file type (regular files only). The file is then opened
    non-blocking without following symlinks, and the opened file is checked again (type, identity and, where
    /proc/self/fd exists, where it really is), so a path swapped between the check and the open is refused
    rather than read. Refusal reasons name the URL and the rule, never the file's content.
    """

    def __init__(self, settings: FetchSettings) -> None:
        self._max_bytes = settings.max_bytes
        self._policy = settings.local_paths

    def fetch_once(
        self, url: str, *, deadline: float, local_roots: Sequence[str] | None = None
    ) -> AttemptOutcome:
        """Read the file `url` names if the policy allows it; `deadline` bounds the read loop.

        Args:
            url: A file:// URL or a bare path.
            deadline: `time.monotonic()` value after which reading stops with "timeout".
            local_roots: Folders the path must lie inside under `local_paths="catalog_dir"` (the folders of the
                files that named `url`); None when the caller named `url` itself (no folder rule applies).
        """
        if url.lower().startswith("file:"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                return AttemptOutcome(
                    "invalid_url", f"{url}: file:// URL names remote host {parts.netloc!r}", url
                )
            path = url2pathname(parts.path)
        else:
            path = url
        if not path:
            return AttemptOutcome("invalid_url", f"{url!r}: empty path", url)
        if self._policy == "none":
            return _refused(url, "local paths are not read (fetch.local_paths = 'none')")
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL byte in the path
            return AttemptOutcome("invalid_url", f"{url}: cannot resolve path ({type(exc).__name__}: {exc})", url)
        refusal = self._path_refusal(real, local_roots)
        if refusal is not None:
            return _refused(url, refusal)
        try:
            # Judged before anything is opened: opening a FIFO or a device can block or have side effects.
            checked = os.stat(real)
        except (FileNotFoundError, NotADirectoryError) as exc:
            return AttemptOutcome("not_found", f"{url}: no such file ({exc.strerror}: {path})", url)
        except PermissionError as exc:
            return AttemptOutcome("not_found", f"{url}: cannot read file ({exc.strerror}: {path})", url)
        except OSError as exc:
            return AttemptOutcome("connection_error", f"{url}: cannot stat {path!r} ({exc.strerror})", url)
        if not stat.S_ISREG(checked.st_mode):
            return _refused(url, f"{real!r} is {_file_kind(checked.st_mode)}, not a regular file")
        if checked.st_size > self._max_bytes:
            return AttemptOutcome(
                "too_large", f"{url}: file size {checked.st_size} exceeds max_bytes={self._max_bytes}", url
            )
        return self._read(url, path, real, checked, local_roots, deadline)

    def _read(self, url: str, path: str, real: str, checked: os.stat_result, local_roots: Sequence[str] | None,
              deadline: float) -> AttemptOutcome:
        """Open `real` (already judged), check the opened file again and read at most max_bytes of it."""
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return _refused(url, f"{real!r} became a symlink after it was checked")
            if isinstance(exc, FileNotFoundError):
                return AttemptOutcome("not_found", f"{url}: no such file ({exc.strerror}: {path})", url)
            if isinstance(exc, PermissionError):
                return AttemptOutcome("not_found", f"{url}: cannot read file ({exc.strerror}: {path})", url)
            return AttemptOutcome("connection_error", f"{url}: cannot open {path!r} ({exc.strerror})", url)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                return _refused(url, f"{real!r} became {_file_kind(opened.st_mode)} after it was checked")
            if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
                return _refused(url, f"{real!r} was replaced by another file after it was checked")
            moved = self._opened_path_refusal(fd, local_roots)
            if moved is not None:
                return _refused(url, f"the opened file {moved}")
            if opened.st_size > self._max_bytes:
                return AttemptOutcome(
                    "too_large", f"{url}: file size {opened.st_size} exceeds max_bytes={self._max_bytes}", url
                )
            with os.fdopen(fd, "rb", buffering=0) as handle:
                fd = -1  # the file object owns (and closes) the descriptor now
                return read_image_body(handle.read, url=url, max_bytes=self._max_bytes, deadline=deadline)
        except OSError as exc:
            return AttemptOutcome("connection_error", f"{url}: cannot read {path!r} ({exc.strerror})", url)
        finally:
            if fd >= 0:
                os.close(fd)

    def _path_refusal(self, real: str, local_roots: Sequence[str] | None) -> str | None:
        """Why the resolved path `real` may not be read under the policy, or None if it may."""
        for tree in SYSTEM_TREES:
            if _inside(real, tree):
                return f"resolves to {real!r}, under {tree}, which is never read"
        if self._policy != "catalog_dir" or local_roots is None:
            return None
        if not local_roots:
            return "no catalog folder is known for this URL (fetch.local_paths = 'catalog_dir')"
        roots = [os.path.realpath(root) for root in local_roots]
        if any(_inside(real, root) for root in roots):
            return None
        folders = ", ".join(repr(root) for root in sorted(set(roots)))
        return f"resolves to {real!r}, outside the catalog folder {folders} (fetch.local_paths = 'catalog_dir')"

    def _opened_path_refusal(self, fd: int, local_roots: Sequence[str] | None) -> str | None:
        """The policy applied to where the opened descriptor really is (catches a folder swapped for a symlink
        between the check and the open); None where the platform cannot say (no /proc/self/fd)."""
        try:
            where = os.readlink(f"{_FD_LINKS}/{fd}")
        except OSError:
            return None
        return self._path_refusal(where, local_roots)


def _refused(url: str, why: str) -> AttemptOutcome:
    return AttemptOutcome("local_path_refused", f"{url}: local path refused: {why}", url)


def _inside(path: str, folder: str) -> bool:
    """Whether the absolute, resolved `path` is `folder` or lies below it."""
    folder = folder.rstrip(os.sep) + os.sep
    return path == folder.rstrip(os.sep) or path.startswith(folder)


def _file_kind(mode: int) -> str:
    """Name the type of a non-regular file, for the refusal reason."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
