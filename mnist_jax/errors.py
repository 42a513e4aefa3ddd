"""Errors that carry a message meant for the user, not a traceback.

`main` prints any `UserError` as one line and exits non-zero; everything else is a bug
and keeps its traceback.
"""


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
