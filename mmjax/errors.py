"""The one exception type for a user's mistakes: a bad config, data set or workdir.

``python -m mmjax.main`` prints a :class:`UserError` as one line on stderr and exits with
code 2, with no traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
  """A mistake in the user's config, data or workdir; the message names what and what is valid."""
