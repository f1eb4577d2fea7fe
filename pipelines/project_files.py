"""Where the data rooms (omop_ddl/, vocab/, mappings/, quality/) are.

They live at the repository root so mapping people edit files, not code. An editable install finds
them beside the package; a wheel carries copies in ``pipelines/_data`` (see pyproject.toml).
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(room: str) -> Path:
    """The folder of one data room, e.g. ``data_dir("omop_ddl")``."""
    for candidate in (_PACKAGE / "_data" / room, _PACKAGE.parent / room):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {room!r} is missing from the Passerelle installation")
