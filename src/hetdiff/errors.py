"""The one exception users see: a one-line message that names the bad thing and the fix."""


class HetdiffError(ValueError):
    """A user-facing error. The CLI prints ``str(err)`` as one line and exits with status 2.

    Raise it for bad input (unknown names, wrong shapes, missing files, mismatched experts);
    keep the message on one line and say what to do instead.
    """
