"""FHIR mapping: one generic engine applying mappings/fhir/*.yaml to staged FHIR frames."""
