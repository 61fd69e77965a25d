"""User-facing errors: one clear line naming the problem and the fix.

Entry points catch `JaxretError` and print `error: <message>` with exit status 2,
never a traceback.
"""


class JaxretError(ValueError):
  """Base class of errors caused by user input (files, flags, configs)."""


class DataError(JaxretError):
  """A dataset file is missing, malformed or empty after filtering."""


class ConfigError(JaxretError):
  """A flag or config value is unknown, of the wrong type, or inconsistent."""
