"""One run at a time per output folder: ``run.lock``, taken once the configuration has been checked.

Two runs writing into one folder interleave checkpoints, thresholds and reports, and the folder
then describes neither. ``acquire_run_lock(folder, workflow)`` creates ``<folder>/run.lock``
atomically (``O_CREAT | O_EXCL``), holding the process id, host, workflow and start time; a second
run on the same folder is refused with ``RunLockedError`` naming the lock and its holder. A lock
whose process has died (a crash, a kill) on this host is stale: the next run takes it over with a
warning, and resumes from the checkpoints as usual. A lock held on another host cannot be checked
from here, so it is refused with the command that removes it.

The lock is released when the workflow ends (``release_held_locks``, called by
``workflows.run_workflow``) or, for a plain ``python -m monai.bundle run``, when the process exits.
A folder that cannot be written is reported as ``OutputFolderError`` before any work starts.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger("ddad")

LOCK_NAME = "run.lock"
_held: dict[Path, int] = {}  # lock path -> the pid that took it (a forked child must not release it)


class RunLockedError(RuntimeError):
    """Another run holds the output folder's lock."""


class OutputFolderError(ValueError):
    """The output folder cannot be created or written."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # half-written by a process killed while writing it: treated as stale


def _is_stale(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(pid)


def _describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock"
    return (
        f"{holder.get('workflow') or 'a run'} (pid {holder.get('pid')} on {holder.get('host')}, "
        f"since {holder.get('started')})"
    )


def _create(path: Path, workflow: str) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "workflow": workflow,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as handle:
        json.dump(holder, handle)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"cannot create the output folder {folder}: {error.strerror}") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"the output folder {folder} is not writable; choose another (config key output_dir or runs_dir)"
        )


def acquire_run_lock(folder, workflow: str = "") -> Path:
    """Take ``<folder>/run.lock`` for this process (re-entrant); refuse when a live run holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if _held.get(path) == os.getpid():
        return path
    _make_folder(folder)
    for _ in range(2):  # the second try follows the removal of a stale lock
        try:
            _create(path, workflow)
            break
        except FileExistsError:
            holder = read_lock(path)
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                break  # this process took it in an earlier workflow (in-process runs)
            if not _is_stale(holder):
                raise RunLockedError(
                    f"{path} is held by {_describe(holder)}: another run is writing into {folder}. Wait for it, "
                    f"or, if it is no longer running, remove the lock (rm '{path}')"
                ) from None
            logger.warning("taking over %s: its run, %s, is no longer running", path, _describe(holder))
            path.unlink(missing_ok=True)
        except PermissionError as error:
            raise OutputFolderError(f"cannot write in the output folder {folder}: {error.strerror}") from error
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES):
                raise OutputFolderError(f"cannot write in the output folder {folder}: {error.strerror}") from error
            raise
    _held[path] = os.getpid()
    return path


def release_held_locks() -> None:
    """Remove the locks this process took."""
    for path, pid in list(_held.items()):
        if pid == os.getpid():
            holder = read_lock(path)
            if holder.get("pid") == pid:
                path.unlink(missing_ok=True)
            del _held[path]


atexit.register(release_held_locks)
