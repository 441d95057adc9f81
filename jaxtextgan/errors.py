"""User-facing errors: one line that names the bad input and says what to do."""

import sys


class InputError(ValueError):
  """Bad input (file, corpus, label, config key, checkpoint, option).

  `main` prints it as a single `error: ...` line and exits with status 2,
  without a traceback, so the message must name the input and the fix.
  """


class Preempted(Exception):
  """SIGTERM arrived during a stage; that stage saved a checkpoint at the step boundary.

  `main` turns it into one message and exit status 0: running the same command again resumes.
  """

  def __init__(self, stage: str, step: int, directory):
    super().__init__(f"[{stage}] SIGTERM: saved step {step} to {directory}; run the same command again to resume")
    self.stage, self.step, self.directory = stage, step, directory


def exit_status(command, *args, **kwargs) -> int:
  """Runs `command`; an InputError becomes one `error: ...` line on stderr and status 2, success status 0."""
  try:
    command(*args, **kwargs)
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
