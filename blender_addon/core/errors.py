"""One family of errors for bad input: every program prints such an error as one line and exits 2.

The message names the bad file, key or value; nothing has been written when one is raised
before work starts.
"""


class InputError(ValueError):
    """Bad input the user can fix (base of every refusal below and of the backend's)."""


class ConfigError(InputError):
    """A bad setting or option; the message names it."""


class DatasetError(InputError):
    """A data set folder that cannot be used as asked; the message names the file or key."""


class MeshError(InputError):
    """A mesh file that cannot be used; the message names the file."""
