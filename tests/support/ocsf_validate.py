#!/usr/bin/env python3
"""Validates OCSF records (JSON lines on stdin) against tests/fixtures/ocsf-schema.json.

Each class of the schema becomes a JSON Schema (draft 2020-12): every attribute typed as the
schema types it (objects recursively, arrays where `is_array`), required attributes required,
enumerated ids limited to their enumeration, `at_least_one` / `just_one` constraints, and no
attribute the schema does not define (except inside `unmapped` and `json_t` values). The
`jsonschema` package validates; Detection Findings are also read by `py-ocsf-models` (Prowler's
pydantic models of OCSF 1.5.0). Prints one line per error, then a summary; exit 1 on any error.

    python3 ocsf_validate.py SCHEMA.json < records.jsonl
"""
import collections
import json
import sys

import jsonschema
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

PRIMITIVE = {
    "string_t": {"type": "string"},
    "integer_t": {"type": "integer"},
    "long_t": {"type": "integer"},
    "float_t": {"type": "number"},
    "boolean_t": {"type": "boolean"},
    "json_t": {},
    "object": {"type": "object"},
}


def build(schema: dict) -> dict:
    types, objects = schema["types"], schema["objects"]

    def primitive(t: str) -> dict:
        seen = set()
        while t not in PRIMITIVE and t in types and "type" in types[t] and t not in seen:
            seen.add(t)
            t = types[t]["type"]
        if t not in PRIMITIVE:
            raise SystemExit(f"unknown type {t}")
        return dict(PRIMITIVE[t])

    def attr(a: dict) -> dict:
        t = a["type"]
        if t == "object":
            s = {"type": "object"}
        elif t in objects:
            s = {"$ref": f"#/$defs/{t}"}
        else:
            s = primitive(t)
            if "enum" in a:
                if s.get("type") == "integer":
                    s["enum"] = [int(v) for v in a["enum"]]
                elif s.get("type") == "string":
                    s["enum"] = a["enum"]
        if a.get("is_array"):
            s = {"type": "array", "items": s}
        return s

    def record(d: dict) -> dict:
        s = {
            "type": "object",
            "properties": {k: attr(a) for k, a in d["attributes"].items()},
            # Attributes of a profile (cloud, osint…) are required only of records that declare
            # the profile in metadata.profiles, which these records do not.
            "required": sorted(
                k
                for k, a in d["attributes"].items()
                if a.get("requirement") == "required" and "profile" not in a
            ),
            "additionalProperties": False,
        }
        c = d.get("constraints", {})
        if c.get("at_least_one"):
            s["anyOf"] = [{"required": [k]} for k in c["at_least_one"]]
        if c.get("just_one"):
            s["oneOf"] = [{"required": [k]} for k in c["just_one"]]
        return s

    defs = {o: record(d) for o, d in objects.items()}
    by_uid = {}
    for name, d in schema["classes"].items():
        s = record(d)
        s["$defs"] = defs
        s["properties"]["class_uid"] = {"const": d["uid"]}
        by_uid[d["uid"]] = (name, jsonschema.Draft202012Validator(s))
    return by_uid


def main() -> None:
    by_uid = build(json.load(open(sys.argv[1])))
    counts, errors = collections.Counter(), 0
    for n, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        found = by_uid.get(rec.get("class_uid"))
        if found is None:
            print(f"line {n} (unknown class): class_uid {rec.get('class_uid')!r} is not one of {sorted(by_uid)}")
            errors += 1
            continue
        name, validator = found
        counts[name] += 1
        for e in validator.iter_errors(rec):
            print(f"line {n} ({name}) at /{'/'.join(map(str, e.absolute_path))}: {e.message}")
            errors += 1
        if name == "detection_finding":
            try:
                DetectionFinding.model_validate(rec)
            except Exception as e:  # pydantic's ValidationError, worded by pydantic
                print(f"line {n} (py-ocsf-models): {e}")
                errors += 1
    print(json.dumps({"records": dict(counts), "errors": errors}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
