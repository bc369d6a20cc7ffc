"""Exceptions that carry a plain-language message meant for the user.

Every message says what was wrong and what to do about it; the CLI prints it without a traceback.
"""


class PPRError(Exception):
    """Base class of every error the user can act on."""


class InputImageError(PPRError, ValueError):
    """The input image cannot be used (not 3D, not CT, too small, unreadable ...)."""


class OutputFileError(PPRError):
    """A result cannot be written where asked (an input, a clash, no such folder, no space left)."""


class RegistrationError(PPRError):
    """The input could not be aligned with the reference head."""


class BundleError(PPRError):
    """A model bundle is missing, corrupt, truncated or incompatible."""
