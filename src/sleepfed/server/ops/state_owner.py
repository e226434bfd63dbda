"""The state folder stays the service user's when an operator runs a command as root.

``sudo sleepfed-server boards register …`` on a packaged server runs as root against
``/var/lib/sleepfed-server``, which belongs to the unit's ``User=sleepfed``. What the command
creates there (SQLite's ``-wal``/``-shm`` files, the registry's key files for ``flwr``,
``flwr``'s own files) would be root's, mode 0600, and the service could no longer open its
own registry. So after a command run as root every entry in the state folder that root owns
is given to the folder's owner."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def hand_back(state_dir: Path) -> int:
    """Give what root owns in ``state_dir`` to the folder's owner; how many entries changed.

    Nothing happens unless this process is root and the folder belongs to someone else."""
    if os.geteuid() != 0 or not state_dir.is_dir():
        return 0
    owner = state_dir.stat()
    if owner.st_uid == 0:
        return 0
    changed = 0
    for path in state_dir.rglob("*"):
        info = path.lstat()
        # A file with a second name may be a hard link the service user planted to a file of
        # root's elsewhere (/etc/shadow): it is never handed over. Links are not followed.
        if info.st_uid == 0 and (stat.S_ISDIR(info.st_mode) or info.st_nlink == 1):
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
            changed += 1
    return changed
