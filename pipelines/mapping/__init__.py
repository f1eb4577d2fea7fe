"""Mapping: from staged source frames to OMOP rows (concept resolution, domain routing, units)."""
