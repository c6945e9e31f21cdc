#!/usr/bin/env python3
"""Validate SBOMs with their formats' own tools: SPDX 2.3 with spdx-tools (the library behind
pyspdxtools), CycloneDX 1.5 with cyclonedx-python-lib's strict JSON schema validator.

usage: validate_sboms.py SPDX.json CYCLONEDX.json
Exits 0 when both are valid; prints every problem and exits 1 otherwise.
"""
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document


def main(spdx_path, cdx_path):
    problems = []
    doc = parse_file(spdx_path)
    for m in validate_full_spdx_document(doc):
        problems.append(f"SPDX: {m.validation_message} ({m.context})")
    with open(cdx_path) as f:
        err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(f.read())
    if err is not None:
        problems.append(f"CycloneDX: {err}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
