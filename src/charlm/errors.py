"""The one exception type charlm raises for bad input.

Every user-facing error (bad corpus, bad option, bad checkpoint, bad prime) is a
:class:`CharLMError` whose message says what was wrong and how to fix it. The command-line
apps print the message alone (no traceback) and exit with status 2.
"""


class CharLMError(ValueError):
    """Bad input or configuration, with a message meant for the user (what, and how to fix it)."""
