"""Regenerate the committed OpenAPI contract: ``python -m sandbox.platform_api.export_openapi [path]``."""

import json
import sys
from pathlib import Path

from sandbox.platform_api.app import create_app

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def render() -> str:
    """The OpenAPI document as committed: pretty-printed, sorted keys, trailing newline."""
    spec = create_app("openapi-export").openapi()  # the token does not appear in the document
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else OPENAPI_PATH
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
