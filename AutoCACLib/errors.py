"""User-facing errors.

Every problem with what the user gave us (a missing file, a 2D image, a segmentation
that does not fit the image) raises :class:`InputError` with a one-line message that names
the problem. The command line prints that line and exits non-zero; the Slicer module shows
it in the panel. Programming errors stay ordinary exceptions.
"""


class AutoCACError(Exception):
    """Base class of the errors AutoCAC reports to its users in one line."""


class InputError(AutoCACError):
    """The input (image, segmentation, table, option) cannot be used as given."""


class Cancelled(AutoCACError):
    """The user cancelled a running pipeline; nothing was written."""
