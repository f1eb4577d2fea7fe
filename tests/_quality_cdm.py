"""A small hand-made CDM v5.4 with known data-quality problems, for the quality tests.

Real OHDSI concept ids; each problem is planted on purpose and the tests assert its exact numbers.
"""

from __future__ import annotations

from datetime import date

CONCEPTS = [
    # concept_id, name, domain, vocabulary, class, standard, code
    (0, "No matching concept", "Metadata", "None", "Undefined", None, "No matching concept"),
    (8507, "MALE", "Gender", "Gender", "Gender", "S", "M"),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
    (8527, "White", "Race", "Race", "Race", "S", "5"),
    (38003564, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Not Hispanic"),
    (9201, "Inpatient Visit", "Visit", "Visit", "Visit", "S", "IP"),
    (9202, "Outpatient Visit", "Visit", "Visit", "Visit", "S", "OP"),
    (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890"),
    (32880, "Standard algorithm", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976953"),
    (201826, "Type 2 diabetes mellitus", "Condition", "SNOMED", "Clinical Finding", "S", "44054006"),
    (26662, "Testicular hypofunction", "Condition", "SNOMED", "Clinical Finding", "S", "48130008"),
    (1567956, "Type 2 diabetes mellitus", "Condition", "ICD10CM", "3-char nonbill code", None, "E11"),
    (3004410, "Hemoglobin A1c/Hemoglobin.total in Blood", "Measurement", "LOINC", "Lab Test", "S", "4548-4"),
    (3025315, "Body weight", "Measurement", "LOINC", "Clinical Observation", "S", "29463-7"),
    (8554, "percent", "Unit", "UCUM", "Unit", "S", "%"),
    (9529, "kilogram", "Unit", "UCUM", "Unit", "S", "kg"),
]

ROWS: dict[str, list[dict]] = {
    "person": [
        dict(person_id=1, gender_concept_id=8507, year_of_birth=1970, race_concept_id=8527,
             ethnicity_concept_id=38003564),
        dict(person_id=2, gender_concept_id=8532, year_of_birth=1985, month_of_birth=4, day_of_birth=12,
             race_concept_id=8527, ethnicity_concept_id=38003564),
        dict(person_id=3, gender_concept_id=8532, year_of_birth=1990, race_concept_id=8527,
             ethnicity_concept_id=38003564),
    ],
    "observation_period": [
        dict(observation_period_id=1, person_id=1, observation_period_start_date=date(2015, 1, 1),
             observation_period_end_date=date(2020, 12, 31), period_type_concept_id=32880),
        # person 2: two periods back to back (2019-12-31, 2020-01-01): one person overlapping
        dict(observation_period_id=2, person_id=2, observation_period_start_date=date(2016, 1, 1),
             observation_period_end_date=date(2019, 12, 31), period_type_concept_id=32880),
        dict(observation_period_id=3, person_id=2, observation_period_start_date=date(2020, 1, 1),
             observation_period_end_date=date(2021, 6, 30), period_type_concept_id=32880),
        # person 3 has no observation period
    ],
    "visit_occurrence": [
        dict(visit_occurrence_id=10, person_id=1, visit_concept_id=9202, visit_start_date=date(2018, 3, 1),
             visit_end_date=date(2018, 3, 1), visit_type_concept_id=32817),
        dict(visit_occurrence_id=11, person_id=2, visit_concept_id=9201, visit_start_date=date(2019, 5, 1),
             visit_end_date=date(2019, 5, 5), visit_type_concept_id=32817),
    ],
    "condition_occurrence": [
        dict(condition_occurrence_id=100, person_id=1, condition_concept_id=201826,
             condition_start_date=date(2018, 3, 1), condition_type_concept_id=32817, visit_occurrence_id=10,
             condition_source_value="E11", condition_source_concept_id=1567956),
        # a male-only condition for a woman
        dict(condition_occurrence_id=101, person_id=2, condition_concept_id=26662,
             condition_start_date=date(2019, 5, 2), condition_type_concept_id=32817, visit_occurrence_id=11),
        # unmapped, and 15 days after its visit ended
        dict(condition_occurrence_id=102, person_id=2, condition_concept_id=0,
             condition_start_date=date(2019, 5, 20), condition_type_concept_id=32817, visit_occurrence_id=11,
             condition_source_value="XYZ", condition_source_concept_id=0),
        # a non-standard (ICD10CM) concept in the standard field, dated before the person's birth
        dict(condition_occurrence_id=103, person_id=1, condition_concept_id=1567956,
             condition_start_date=date(1960, 1, 1), condition_type_concept_id=32817,
             condition_source_value="E11", condition_source_concept_id=1567956),
    ],
    "measurement": [
        dict(measurement_id=1000, person_id=1, measurement_concept_id=3004410,
             measurement_date=date(2018, 3, 1),
             measurement_type_concept_id=32817, value_as_number=6.5, unit_concept_id=8554,
             unit_source_value="%",
             visit_occurrence_id=10),
        # HbA1c in kilograms: an implausible unit
        dict(measurement_id=1001, person_id=2, measurement_concept_id=3004410,
             measurement_date=date(2019, 5, 2),
             measurement_type_concept_id=32817, value_as_number=7.1, unit_concept_id=9529,
             unit_source_value="kg", visit_occurrence_id=11),
        # points at a visit that does not exist
        dict(measurement_id=1002, person_id=1, measurement_concept_id=3025315,
             measurement_date=date(2018, 3, 1),
             measurement_type_concept_id=32817, value_as_number=80.0, unit_concept_id=9529,
             unit_source_value="kg", visit_occurrence_id=99),
    ],
    "cdm_source": [
        dict(cdm_source_name="Quality test CDM", cdm_source_abbreviation="QTEST",
             cdm_holder="Passerelle tests",
             source_release_date=date(2024, 1, 31), cdm_release_date=date(2024, 2, 1), cdm_version="5.4",
             cdm_version_concept_id=756265, vocabulary_version="v5.0 30-AUG-24"),
    ],
}  # fmt: skip


def concept_rows() -> list[dict]:
    return [
        dict(concept_id=c[0], concept_name=c[1], domain_id=c[2], vocabulary_id=c[3], concept_class_id=c[4],
             standard_concept=c[5], concept_code=c[6], valid_start_date=date(1970, 1, 1),
             valid_end_date=date(2099, 12, 31))
        for c in CONCEPTS
    ]  # fmt: skip


def insert_statements(schema: str = "main") -> list[str]:
    """INSERT statements (standard SQL literals) for every row, readable by DuckDB and PostgreSQL."""
    statements = []
    for table, rows in {**ROWS, "concept": concept_rows()}.items():
        for row in rows:
            columns = ", ".join(row)
            values = ", ".join(_literal(v) for v in row.values())
            statements.append(f"INSERT INTO {schema}.{table} ({columns}) VALUES ({values})")
    return statements


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)
