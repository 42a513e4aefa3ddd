"""One writer per folder: an exclusive lock that dies with the process holding it.

A training run, an evaluation that writes files, a report and a sweep each hold the
lock of the folder they write (`FOLDER/.lock`) for as long as they write it. A second
process that wants the same folder is refused at once with one line naming the
holder (PID, host, start time, command), instead of both writing checkpoints and
metrics over each other.

The lock is `fcntl.flock` on the file: the kernel drops it when the holder exits,
however it exits (SIGKILL, a crash, a power cut on a local disk), so a lock left
behind never blocks anyone. The file's content only describes the holder; it is
never what decides. Locks are re-entrant within a process (training holds its
workdir's lock while it evaluates and draws the report), which flock alone is not.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import threading

try:
  import fcntl
except ImportError:  # Windows: filelock's msvcrt lock, without the holder's details.
  fcntl = None

from mnist_jax.errors import UserError

LOCK_NAME = ".lock"


class LockedError(UserError):
  """Another process holds the folder's lock."""


_held: dict[str, list] = {}  # Real path -> [open file, depth]: re-entrancy.
_guard = threading.Lock()


def holder(folder: str) -> dict | None:
  """What the lock file says of its last holder (it may no longer hold it)."""
  try:
    with open(os.path.join(folder, LOCK_NAME)) as f:
      return json.loads(f.read() or "null")
  except (OSError, ValueError):
    return None


def describe(info: dict | None) -> str:
  """'PID 123 on host h since 2026-12-06 19:50:01 UTC (mnist-jax --config=...)'."""
  if not info:
    return "another process"
  command = " ".join(os.path.basename(a) if i == 0 else a
                     for i, a in enumerate(info.get("command") or []))
  if len(command) > 160:
    command = command[:157] + "..."
  return (f"PID {info.get('pid')} on host {info.get('host')} since "
          f"{info.get('since')}" + (f" ({command})" if command else ""))


def _try_lock(path: str):
  """The open lock file, locked; None if another process holds it."""
  if fcntl is None:
    import filelock
    lock = filelock.FileLock(path + ".win")
    try:
      lock.acquire(timeout=0)
    except filelock.Timeout:
      return None
    return lock
  f = open(path, "a+")  # Never truncated before the lock is ours: it names the holder.
  try:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    return None
  except OSError:
    f.close()
    raise
  return f


def _write_holder(f) -> None:
  if fcntl is None:
    return
  since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  f.seek(0)
  f.truncate()
  f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                      "since": since, "command": list(sys.argv)}))
  f.flush()


def _release(handle) -> None:
  if fcntl is None:
    handle.release()
    return
  with contextlib.suppress(OSError):
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
  handle.close()


def _locked_error(folder: str, what: str, hint: str) -> LockedError:
  return LockedError(f"{what} {folder} is in use by {describe(holder(folder))}; "
                     f"wait for it to end or stop it, or {hint}.")


def check_free(folder: str, what: str, hint: str) -> None:
  """Raises `acquire`'s LockedError if another process holds `folder`'s lock now,
  without taking it: a second writer can leave before it loads anything heavy."""
  if is_locked_by_another(folder):
    raise _locked_error(folder, what, hint)


def acquire(folder: str, what: str, hint: str) -> bool:
  """Takes `folder`'s lock (re-entrant); returns whether it was taken.

  Args:
    folder: an existing folder.
    what: what the folder is, for the message ("workdir", "sweep folder").
    hint: what the user can do instead, for the message.

  Raises:
    LockedError: another process holds it.
    UserError: the lock file cannot be created (read-only folder and the like).
  """
  key = os.path.realpath(folder)
  with _guard:
    if key in _held:
      _held[key][1] += 1
      return True
    path = os.path.join(folder, LOCK_NAME)
    try:
      handle = _try_lock(path)
    except OSError as e:
      raise UserError(f"cannot lock {what} {folder} ({e.strerror}: {path}); "
                      f"is it writable?") from None
    if handle is None:
      raise _locked_error(folder, what, hint)
    _write_holder(handle)
    _held[key] = [handle, 1]
  return True


def release(folder: str) -> None:
  """Gives back one `acquire` of `folder`'s lock; the last one unlocks it."""
  key = os.path.realpath(folder)
  with _guard:
    entry = _held.get(key)
    if entry is None:
      return
    entry[1] -= 1
    if entry[1] == 0:
      del _held[key]
      _release(entry[0])


def is_locked_by_another(folder: str) -> bool:
  """Whether another process holds `folder`'s lock now (this one's never counts)."""
  if os.path.realpath(folder) in _held or not os.path.isdir(folder):
    return False
  try:
    handle = _try_lock(os.path.join(folder, LOCK_NAME))
  except OSError:
    return False
  if handle is None:
    return True
  _release(handle)
  return False


@contextlib.contextmanager
def locked(folder: str, what: str = "workdir",
           hint: str = "use another --workdir"):
  """`acquire` for the duration of a `with` block."""
  acquire(folder, what, hint)
  try:
    yield
  finally:
    release(folder)
