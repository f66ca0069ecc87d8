"""Checks every example in an OpenAPI 3.1 document against its schema.

Usage: python openapi_examples.py openapi.json

Examples sit in schemas (`example`, `examples: [...]`) and beside them in
media types, parameters and headers (`example`, `examples: {name: {value}}`).
Each is validated with openapi-schema-validator's OAS 3.1 dialect, formats
(`uuid`, `date-time`, `int32`, ...) included, against the schema it
illustrates; `$ref`s resolve within the document. Prints one line per
invalid example and exits 1 if there is any; else prints how many passed.
"""

import json
import sys

from openapi_schema_validator import OAS31Validator

# Keywords whose values are data, not schemas: never walked into.
DATA = {"example", "examples", "default", "enum", "const"}
# Keywords whose values map names to schemas.
SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "dependentSchemas"}


def pointer(path):
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in path)
    return "#/" + "/".join(escaped)


class Checker:
    def __init__(self, document):
        self.document = document
        self.checked = 0
        self.failures = []

    def check(self, value, schema_path, where):
        """Validates `value` against the schema at `schema_path`."""
        # The document itself is the root schema: its other members are
        # unknown keywords, and every `#/components/...` resolves in it.
        root = dict(self.document, **{"$ref": pointer(schema_path)})
        validator = OAS31Validator(root, format_checker=OAS31Validator.FORMAT_CHECKER)
        self.checked += 1
        for error in validator.iter_errors(value):
            at = "/".join(str(p) for p in error.absolute_path) or "the top"
            self.failures.append(f"{pointer(where)}: at {at}: {error.message}")

    def walk(self, node, path, context):
        """`context`: "document", "schema", or "schemas" (a map of them)."""
        if isinstance(node, list):
            for i, item in enumerate(node):
                self.walk(item, path + [i], context)
            return
        if not isinstance(node, dict):
            return
        if context == "schemas":
            for name, schema in node.items():
                self.walk(schema, path + [name], "schema")
            return
        if context == "schema":
            if "example" in node:
                self.check(node["example"], path, path + ["example"])
            if isinstance(node.get("examples"), list):
                for i, example in enumerate(node["examples"]):
                    self.check(example, path, path + ["examples", i])
        elif "schema" in node:
            # A media type, parameter or header: examples beside a schema.
            if "example" in node:
                self.check(node["example"], path + ["schema"], path + ["example"])
            for name, example in (node.get("examples") or {}).items():
                if "value" in example:
                    self.check(example["value"], path + ["schema"], path + ["examples", name])
        for key, child in node.items():
            if key in DATA and context == "schema":
                continue
            if key in ("example", "examples") and context == "document":
                continue
            if context == "schema":
                self.walk(child, path + [key], "schemas" if key in SCHEMA_MAPS else "schema")
            elif key == "schema":
                self.walk(child, path + [key], "schema")
            elif path == ["components"] and key == "schemas":
                self.walk(child, path + [key], "schemas")
            else:
                self.walk(child, path + [key], "document")


def main():
    with open(sys.argv[1], encoding="utf-8") as file:
        document = json.load(file)
    checker = Checker(document)
    checker.walk(document, [], "document")
    for failure in checker.failures:
        print(failure)
    if checker.failures:
        print(f"{len(checker.failures)} of {checker.checked} examples do not match their schema")
        return 1
    print(f"all {checker.checked} examples match their schema")
    return 0


if __name__ == "__main__":
    sys.exit(main())
