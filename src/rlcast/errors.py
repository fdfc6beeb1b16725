"""The one exception type users see: a single line naming the file, tensor or step at fault."""


class RlcastError(Exception):
    """Bad input or an impossible request. The CLI prints it as one line and exits non-zero."""
