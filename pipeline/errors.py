class VidretError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line and exits non-zero, so the message
    must say what is wrong and where (a file, a line, an option).
    """
