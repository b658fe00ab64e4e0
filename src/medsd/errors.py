"""The one exception type users can cause; the CLI prints it as a single line and exits with code 2."""


class MedsdError(Exception):
    """A problem with the user's input (config, files, arguments) that they can fix.

    The message names the input, what was wrong and what to do about it.
    """
