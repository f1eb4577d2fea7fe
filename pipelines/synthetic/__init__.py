"""Synthetic sources for demos, tests and benchmarks: FHIR Bundles, a Bulk export, openEHR AQL pages."""

from pipelines.synthetic.generator import GenerationReport, generate

__all__ = ["GenerationReport", "generate"]
