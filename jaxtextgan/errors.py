"""User-facing errors: one line that names the bad input and says what to do."""


class InputError(ValueError):
  """Bad input (file, corpus, label, config key, checkpoint, option).

  `main` prints it as a single `error: ...` line and exits with status 2,
  without a traceback, so the message must name the input and the fix.
  """
