"""Errors that carry a message meant for the user, not a traceback.

`main` prints any `UserError` as one line and exits non-zero; everything else is a bug
and keeps its traceback.
"""

import contextlib
import errno


class UserError(Exception):
  """Bad input from the user: config, workdir, files. The message says what to do."""


class ConfigError(UserError):
  """A config value is invalid."""


class DataError(UserError):
  """The dataset files are missing, corrupt, or cannot be fetched."""


class WorkdirError(UserError):
  """The workdir does not match the request (wrong config, missing checkpoint)."""


class NonFiniteError(UserError):
  """Training produced a NaN or infinite loss or gradient."""


class DamagedFileError(WorkdirError):
  """A file mnist_jax wrote cannot be read back (truncated, not JSON, wrong shape)."""


# Why a write failed, for the errno values that are the disk's or the folder's fault.
_WRITE_FAILURES = {errno.ENOSPC: "no space left on device",
                   errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system",
                   errno.EACCES: "permission denied"}


class WriteError(UserError):
  """A file could not be written: full disk, quota, read-only or forbidden folder.

  `str()` is "<why> writing <path>", then "; <advice>" once a caller that knows what
  is intact and how to redo the write has added it (`advise`).
  """

  def __init__(self, path: str, reason: str, advice: str = ""):
    super().__init__(f"{reason} writing {path}" + (f"; {advice}" if advice else ""))
    self.path, self.reason, self.advice = path, reason, advice

  def advise(self, advice: str) -> "WriteError":
    """This error with `advice` (kept if a deeper caller already gave one)."""
    return self if self.advice else WriteError(self.path, self.reason, advice)

  @classmethod
  def of(cls, error: OSError, path: str) -> "WriteError | None":
    """The WriteError for `error`, or None when its errno is not a disk's fault."""
    reason = _WRITE_FAILURES.get(error.errno)
    return None if reason is None else cls(path, reason)


@contextlib.contextmanager
def disk_errors(path: str):
  """Turns a full disk (and the like) while writing `path` into a `WriteError`."""
  try:
    yield
  except OSError as e:
    failure = WriteError.of(e, path)
    if failure is None:
      raise
    raise failure from None
