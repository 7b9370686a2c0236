"""The house rules that keep the package readable, checked.

* The layers of docs/architecture.md (import-linter contracts in
  pyproject.toml): a module imports only from layers below its own, steps
  never import each other, storage knows nothing of plans or steps.
* Every parameter is defined once (pystitch.params): the checked-in
  nextflow_schema.json is generated from it, and each command's parser,
  help and the Python API take their parameters from it.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import pystitch
from pystitch import params

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_nextflow_schema_is_generated_from_the_parameters():
    checked_in = (REPO / "nextflow_schema.json").read_text()
    assert checked_in == params.nextflow_schema_text(), (
        "nextflow_schema.json is out of date: regenerate it with "
        "`python -m pystitch.params > nextflow_schema.json`")


def test_every_pipeline_parameter_reaches_its_step_under_its_cli_flag():
    """A parameter the schema hands to a step is one the step's CLI accepts under that flag."""
    schema = params.nextflow_schema()
    for group in schema["$defs"].values():
        for name, prop in group["properties"].items():
            route = prop.get("x-pystitch")
            if not route:
                continue
            for step in route["steps"]:
                flags = {p.flag for p in params.for_command(step)}
                assert route["flag"] in flags, (name, step)


@pytest.mark.parametrize("command", params.COMMANDS)
def test_each_parameter_is_defined_once_per_command(command):
    names = [p.name for p in params.for_command(command)]
    assert len(names) == len(set(names))


def test_api_documents_every_parameter():
    doc = inspect.getdoc(pystitch.run)
    for p in params.for_command("run"):
        assert f"\n{p.name} : " in "\n" + doc, p.name


def test_no_python_fire():
    """The CLIs are generated from pystitch.params with argparse; fire's generated
    short flags (-h for --halo) and help on stderr are gone for good."""
    for path in (REPO / "pystitch").rglob("*.py"):
        assert "import fire" not in path.read_text(), path
