"""The `passerelle` command as a user meets it: help, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pipelines.cli import main

PASSERELLE = str(Path(sys.executable).parent / "passerelle")


def test_help_lists_commands_with_descriptions():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "ddl" in result.output and "Print the OMOP CDM v5.4 DDL" in result.output
    assert "init" in result.output


def test_ddl_prints_postgresql_tables_keys_and_indexes():
    result = CliRunner().invoke(main, ["ddl", "--dialect", "postgresql"])
    assert result.exit_code == 0
    assert "CREATE TABLE person (person_id BIGINT NOT NULL" in result.output
    assert "ALTER TABLE person ADD CONSTRAINT xpk_person PRIMARY KEY (person_id);" in result.output
    assert "CREATE INDEX idx_concept_code ON concept(concept_code);" in result.output


def test_user_error_is_one_line_without_traceback(tmp_path):
    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_text("hello")
    result = subprocess.run(
        [PASSERELLE, "init", "--warehouse", str(not_duckdb)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {not_duckdb}: not a DuckDB warehouse")
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_text("hello")
    result = subprocess.run(
        [PASSERELLE, "--debug", "init", "--warehouse", str(not_duckdb)], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_init_command_creates_a_warehouse(tmp_path):
    target = tmp_path / "sub" / "omop.duckdb"
    result = CliRunner().invoke(main, ["init", "--warehouse", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output == f"created: {target}\n"
    assert target.exists()
