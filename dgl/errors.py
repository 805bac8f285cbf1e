"""User-facing errors: one line that names the thing and what to do, no traceback."""


class UserError(Exception):
    """Bad input from the user (params, files, data). The CLI prints it as one line."""
