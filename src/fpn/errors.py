"""The one family of errors a user can fix (a missing file, a bad config value, a corrupt dataset).

``UserError``'s message is the single line the command line prints; every other exception is a
bug and prints its traceback. This module imports nothing from fpn, so every layer can use it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message (one line) names the file or field and the problem."""
