"""`python -m training.bundle schema`: the JSON Schema of bundle.json (docs/bundle.schema.json);
`alias-schema`: that of promoted.json (docs/promoted.schema.json)."""

from __future__ import annotations

import json
import sys

from training.bundle.alias import Promotion
from training.bundle.manifest import Manifest


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["schema"]:
        print(json.dumps(Manifest.model_json_schema(by_alias=True), indent=2))
    elif args == ["alias-schema"]:
        print(json.dumps(Promotion.model_json_schema(), indent=2))
    else:
        sys.exit("usage: python -m training.bundle schema|alias-schema")


if __name__ == "__main__":
    main()
