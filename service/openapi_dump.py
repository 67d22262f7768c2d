"""Write the app's OpenAPI document (committed as openapi/openapi.json; a test checks it)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def generate() -> str:
    """The OpenAPI JSON of an app built with throw-away embedded settings."""
    from .app import create_app
    from .settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp)))
        return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "openapi/openapi.json")
    out.write_text(generate())
    print(f"wrote {out}")
