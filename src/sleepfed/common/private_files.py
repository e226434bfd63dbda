"""Files and folders that hold secrets, written so that nobody else can read them or redirect
them: the one way ``sleepfed-enroll`` and ``sleepfed-server`` write keys, configs and state.

A file is written through a temporary file with a random name in the same folder, created
with ``O_CREAT | O_EXCL | O_NOFOLLOW``: a symlink planted at any name we might use is never
followed (``O_EXCL`` refuses an existing name, links included), and the file is ours alone
from its first byte, its final mode and owner set on the descriptor before any byte is
written (the umask can only narrow what ``open`` creates, and a narrowed public file would be
wrong too). It is then fsync'ed, renamed over the target and the folder fsync'ed, so a crash
leaves the old file or the new one, never a torn or empty one.

A symlink where one of our files or folders should be is refused rather than replaced or
followed: we did not make it, so someone else did, and following it would write or chmod
whatever it points at (a victim file). Modes and owners of existing files are changed only
through a descriptor opened with ``O_NOFOLLOW`` for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

# Attempts at a fresh temporary name before giving up: a collision of 64 random bits means
# someone is planting names in the folder, not bad luck.
TEMPORARY_NAME_ATTEMPTS = 8


class SymlinkRefusedError(OSError):
    """A symlink stands where one of our files or folders should be."""


def _refused(path: Path) -> SymlinkRefusedError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return SymlinkRefusedError(
        f"{path} is a symbolic link (to {target}), not a file or folder we made: refusing to "
        "write or chmod through it; remove it if it is yours"
    )


def _open_no_follow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _refused(path) from None
        raise


def _set_mode_and_owner(fd: int, mode: int, owner: tuple[int, int] | None) -> bool:
    """Give the open file ``mode`` and ``owner``; returns whether anything changed."""
    info = os.fstat(fd)
    changed = False
    if owner is not None and (info.st_uid, info.st_gid) != owner:
        os.fchown(fd, *owner)
        changed = True
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
        changed = True
    return changed


def read_no_follow(path: Path) -> bytes | None:
    """The bytes of the regular file ``path``, or None if there is nothing there.

    Raises SymlinkRefusedError for a symlink and OSError for anything but a regular file
    (``O_NONBLOCK``: a FIFO planted there cannot make us hang)."""
    try:
        fd = _open_no_follow(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return handle.read()


def write_atomic(
    path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with a file holding ``data``, with exactly ``mode`` (and ``owner``)
    from its first byte; a symlink at ``path`` is refused (see the module docstring)."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Everything below is relative to the folder's descriptor: the folder we checked is
        # the folder we write in, even if its path is swapped meanwhile.
        try:
            if stat.S_ISLNK(os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_mode):
                raise _refused(path)
        except FileNotFoundError:
            pass
        for _ in range(TEMPORARY_NAME_ATTEMPTS):
            temporary = f".{path.name}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(
                    temporary,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=folder,
                )
                break
            except FileExistsError:  # a name someone planted (a link, a file): never ours
                continue
        else:
            raise FileExistsError(
                errno.EEXIST,
                f"no free temporary name after {TEMPORARY_NAME_ATTEMPTS} attempts",
                str(path.parent),
            )
        try:
            with os.fdopen(fd, "wb") as handle:
                _set_mode_and_owner(fd, mode, owner)  # exact, whatever the umask
                handle.write(data)
                handle.flush()
                os.fsync(fd)
            os.replace(temporary, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def ensure_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Make ``path`` a regular file holding ``data`` with ``mode`` and ``owner``, writing it
    only if its bytes differ; returns whether anything changed (idempotent set-up steps)."""
    if read_no_follow(path) != data:
        write_atomic(path, data, mode, owner)
        return True
    fd = _open_no_follow(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return _set_mode_and_owner(fd, mode, owner)
    finally:
        os.close(fd)


def _open_folder(path: Path) -> int:
    try:
        return _open_no_follow(path, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path)) from None


def ensure_directory(path: Path, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Make ``path`` a folder with exactly ``mode`` (and ``owner``); a symlink there is
    refused. Missing parents are made with the process's umask. Returns whether anything
    changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)  # no wider than the owner's until the mode below is set
        made = True
    except FileExistsError:
        made = False
    fd = _open_folder(path)
    try:
        return _set_mode_and_owner(fd, mode, owner) or made
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> None:
    """Make ``path`` a folder only its owner can enter: made 0700 (whatever the umask), and a
    folder found with any group or other bits loses them (the owner's own bits are kept). A
    symlink is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        made = True
    except FileExistsError:
        made = False
    fd = _open_folder(path)
    try:
        current = stat.S_IMODE(os.fstat(fd).st_mode)
        wanted = 0o700 if made else current & 0o700
        if current != wanted:
            os.fchmod(fd, wanted)
    finally:
        os.close(fd)
