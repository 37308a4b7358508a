"""One exception type for mistakes a user can fix: bad sizes, bad files, mismatched indexes.

The CLI prints its message as one line on stderr and exits with status 2; library users catch it
like any ValueError.
"""


class AdaError(ValueError):
    """An input or configuration error, with a message that names the rule and the bad value."""
