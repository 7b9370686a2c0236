"""The pipeline's files agree with each other (no Nextflow run needed).

Every module has a meta.yml that names its outputs and reports its versions
through the `versions` topic; no module writes a versions.yml by hand; the
samplesheet schema's columns are the parameters the schema marks as sample
columns; the batch steps' processes request what the plan estimated; JSON
is parsed into plain maps, safe to read from many threads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))


@pytest.mark.parametrize("module", MODULES, ids=[m.parent.name for m in MODULES])
def test_module_has_meta_yml_naming_its_outputs_and_versions_topic(module):
    text = module.read_text()
    meta = yaml.safe_load((module.parent / "meta.yml").read_text())
    assert meta["name"] == module.parent.name
    emits = re.findall(r"emit:\s*(\w+)", text)
    assert sorted(meta["output"]) == sorted(emits)
    assert "topic: versions" in text and "versions" in meta["topics"]
    assert "versions.yml" not in text and "END_VERSIONS" not in text


def test_samplesheet_columns_are_the_sample_column_parameters():
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    sheet = json.loads((REPO / "assets" / "schema_input.json").read_text())
    props = {n: p for g in schema["$defs"].values() for n, p in g["properties"].items()}
    sample_columns = {n for n, p in props.items() if p.get("x-pystitch", {}).get("sample_column")}
    columns = set(sheet["items"]["properties"])
    assert columns == {"sample", "image"} | sample_columns
    for name in sample_columns:
        assert sheet["items"]["properties"][name]["type"] == props[name]["type"], name
    assert sheet["items"]["required"] == ["sample", "image"]


@pytest.mark.parametrize("process", ["segment_block", "face_pairs", "apply_lut"])
def test_batch_steps_request_the_plans_estimate(process):
    text = (REPO / "modules" / "local" / process / "main.nf").read_text()
    assert "val(estimate)" in text
    assert re.search(r"memory \{ \"\$\{estimate\.memory_mb \* task\.attempt\} MB\" \}", text)
    assert re.search(r"time\s+\{ \"\$\{estimate\.minutes \* task\.attempt\} min\" \}", text)
    assert "process_low" not in text and "process_medium" not in text


def test_json_read_into_channels_is_parsed_eagerly():
    """groovy's JsonSlurper returns lazy maps that fill themselves on first read, and
    are not safe to read from two threads at once: the tasks of one image read the
    same estimates map concurrently, and one saw ``memory_mb`` as null."""
    sources = [*REPO.glob("*.nf"), *REPO.glob("workflows/**/*.nf"), *REPO.glob("subworkflows/**/*.nf"),
               *REPO.glob("modules/**/*.nf")]
    assert sources
    lazy = [str(p.relative_to(REPO)) for p in sources if re.search(r"\bJsonSlurper\s*\(", p.read_text())]
    assert lazy == []
