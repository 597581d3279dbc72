"""User-facing errors.

A `UserError` is a problem with the user's input (config, data, cache, workdir)
rather than a bug in mtkd. `mtkd.main` prints its message as one paragraph and
exits with status 2, without a traceback. Messages say what is wrong, where,
and how to fix it.
"""


class UserError(Exception):
  """A problem the user can fix; the message names the problem and the fix."""
