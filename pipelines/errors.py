"""User-facing errors: each message says what is wrong and what to do about it.

The CLI prints a ``PasserelleError`` as one line (no traceback unless ``--debug``) and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class PasserelleError(Exception):
    """A problem the user can fix: a bad path, a bad option, an input that cannot be read."""


class SchemaError(PasserelleError):
    """The CDM specification or a warehouse does not look like OMOP CDM v5.4."""


class WarehouseError(PasserelleError):
    """The warehouse cannot be opened or written."""
