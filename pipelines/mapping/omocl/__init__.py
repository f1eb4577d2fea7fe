"""OMOCL (grammar OMOCL/v1.0.0): openEHR archetype to OMOP mapping files, read and applied."""

from pipelines.mapping.omocl.engine import EngineResult, apply_catalogue
from pipelines.mapping.omocl.grammar import OmoclError, OmoclFile, load_catalogue, load_file, load_folder

__all__ = [
    "EngineResult",
    "OmoclError",
    "OmoclFile",
    "apply_catalogue",
    "load_catalogue",
    "load_file",
    "load_folder",
]
