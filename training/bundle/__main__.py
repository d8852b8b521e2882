"""`python -m training.bundle schema`: the JSON Schema of bundle.json (docs/bundle.schema.json)."""

from __future__ import annotations

import json
import sys

from training.bundle.manifest import Manifest


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args != ["schema"]:
        sys.exit("usage: python -m training.bundle schema")
    print(json.dumps(Manifest.model_json_schema(by_alias=True), indent=2))


if __name__ == "__main__":
    main()
