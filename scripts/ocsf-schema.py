#!/usr/bin/env python3
"""Writes tests/fixtures/ocsf-schema.json: the part of the OCSF schema the OCSF records of
agent-guardian use (their four classes and every object reachable from them, with attribute
types, requirements, enums and constraints), from a schema compiled by the OCSF project's own
compiler (PyPI ocsf-lib):

    git clone https://github.com/ocsf/ocsf-schema && git -C ocsf-schema checkout d095c1f00c109620c60171cd8d9ea29c92b913e4
    pip install ocsf-lib==0.10.4
    python3 -m ocsf.compile ocsf-schema > compiled.json
    scripts/ocsf-schema.py compiled.json d095c1f00c109620c60171cd8d9ea29c92b913e4 > tests/fixtures/ocsf-schema.json

tests/support/ocsf_validate.py turns it into JSON Schemas and validates records with them.
"""
import json
import sys

CLASSES = ["detection_finding", "remediation_activity", "application_error", "base_event"]


def main() -> None:
    compiled = json.load(open(sys.argv[1]))
    commit = sys.argv[2]
    objects = compiled["objects"]
    seen, todo = set(), []

    def reach(attrs: dict) -> None:
        for a in attrs.values():
            t = a.get("type")
            if t in objects and t not in seen:
                seen.add(t)
                todo.append(t)

    for c in CLASSES:
        reach(compiled["classes"][c]["attributes"])
    while todo:
        reach(objects[todo.pop()]["attributes"])

    def strip(d: dict) -> dict:
        attrs = {}
        for k, v in d["attributes"].items():
            a = {kk: v[kk] for kk in ("type", "requirement", "is_array", "profile") if v.get(kk) is not None}
            if v.get("enum"):
                a["enum"] = sorted(v["enum"].keys())
            attrs[k] = a
        out = {"attributes": attrs}
        if d.get("uid") is not None:
            out["uid"] = d["uid"]
        if d.get("constraints"):
            out["constraints"] = d["constraints"]
        return out

    types = {
        k: {kk: v[kk] for kk in ("type",) if v.get(kk) is not None}
        for k, v in compiled["types"].items()
    }
    json.dump(
        {
            "_source": {
                "schema": "https://github.com/ocsf/ocsf-schema",
                "commit": commit,
                "version": compiled["version"],
                "compiled_with": "ocsf-lib 0.10.4 (python3 -m ocsf.compile)",
            },
            "classes": {c: strip(compiled["classes"][c]) for c in CLASSES},
            "objects": {o: strip(objects[o]) for o in sorted(seen)},
            "types": types,
        },
        sys.stdout,
        indent=1,
        sort_keys=True,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
