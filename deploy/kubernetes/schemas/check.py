"""Checks custom resources against the JSON schemas in this folder, for the deploy tests.

Reads, on stdin, a JSON list of {"schema": FILE, "doc": DOCUMENT}; prints one line per document
that fails (its kind, name and the first error) and exits 1 if any did, else 0.
"""

import json
import pathlib
import sys

import jsonschema


def main() -> int:
    folder = pathlib.Path(sys.argv[1])
    failed = 0
    for item in json.load(sys.stdin):
        schema = json.loads((folder / item["schema"]).read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        doc = item["doc"]
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        if errors:
            failed += 1
            where = "/".join(str(p) for p in errors[0].absolute_path)
            name = doc.get("metadata", {}).get("name")
            print(f"{doc.get('kind')} {name}: at /{where}: {errors[0].message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
