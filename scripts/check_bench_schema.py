#!/usr/bin/env python3
"""Validates the sample coreml-bench files in tests/data/bench/ against
schema/bench-report.schema.json and schema/bench-raw.schema.json (JSON Schema draft 2020-12).

    python3 scripts/check_bench_schema.py [ROOT]

File names say what each sample must do:
  report-*.json      a report; must validate (report-from-raw-*: computed by
                     src/bench/raw.rs from raw-*, kept by tests/bench_raw.rs)
  raw-*.json         what the harness writes; must validate against bench-raw
  reference-*.json   a --reference file; must validate against $defs/reference_file
  invalid-*.json     must NOT validate (or not even parse): proves the schema rejects it

Requires: jsonschema >= 4.18 (tested with 4.26.0; `pip install jsonschema==4.26.0`).
Exit status 0 when every file behaves as its name says, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonschema import Draft202012Validator


def load_json(path: Path):
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def validator_for(schema: dict, ref: str | None) -> Draft202012Validator:
    """A validator for the whole schema, or for one of its $defs (so the
    reference-file format can live in the same schema file as the report)."""
    if ref is None:
        return Draft202012Validator(schema)
    # A wrapper that points into the report schema; $defs resolve against it.
    wrapper = {"$schema": schema["$schema"], "$ref": ref, "$defs": schema["$defs"]}
    return Draft202012Validator(wrapper)


def errors_of(validator: Draft202012Validator, doc) -> list[str]:
    found = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    schema_path = root / "schema" / "bench-report.schema.json"
    schema = load_json(schema_path)
    # A broken schema would make every check below meaningless.
    Draft202012Validator.check_schema(schema)
    report = validator_for(schema, None)
    reference = validator_for(schema, "#/$defs/reference_file")
    raw = None  # loaded at the first raw-* sample: a root may hold reports only

    samples = sorted((root / "tests" / "data" / "bench").glob("*.json"))
    if not samples:
        print(f"no samples under {root / 'tests/data/bench'}")
        return 1
    failures = 0
    for path in samples:
        name = path.name
        rel = path.relative_to(root)
        try:
            doc = load_json(path)
        except json.JSONDecodeError as e:
            if name.startswith("invalid-"):
                print(f"ok    {rel}: rejected (not JSON: {e.msg} at line {e.lineno})")
            else:
                print(f"FAIL  {rel}: not JSON: {e}")
                failures += 1
            continue
        if name.startswith("reference-"):
            validator = reference
        elif name.startswith("raw-"):
            if raw is None:
                raw_schema = load_json(root / "schema" / "bench-raw.schema.json")
                Draft202012Validator.check_schema(raw_schema)
                raw = Draft202012Validator(raw_schema)
            validator = raw
        else:
            validator = report
        errs = errors_of(validator, doc)
        if name.startswith("invalid-"):
            if errs:
                print(f"ok    {rel}: rejected ({errs[0]})")
            else:
                print(f"FAIL  {rel}: should not validate but does")
                failures += 1
        elif errs:
            print(f"FAIL  {rel}:")
            for e in errs:
                print(f"        {e}")
            failures += 1
        else:
            kind = "reference file" if validator is reference else "raw file" if validator is raw else "report"
            print(f"ok    {rel}: valid {kind}")
    print(f"{len(samples) - failures}/{len(samples)} samples as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
