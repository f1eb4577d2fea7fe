"""Passerelle: openEHR and FHIR R4 to OMOP CDM v5.4.

The package is organised by room, in the order data flows: ``sources`` (readers), ``mapping``
(concept resolution, domain routing), ``warehouse`` (sinks, id map, lineage), ``derive`` (eras,
observation periods), ``quality`` (DQD checks). ``cdm`` holds the CDM schema; ``cli`` and
``definitions`` are thin front ends over the same functions.
"""

__version__ = "0.1.0"
