"""``voltbourse docs [--check] [--dir DIR]``: write (or check) the generated reference
documents from what is registered: ``openapi.json`` (every route), ``ws-schema.json``
(every peer message) and ``errors.md`` (the error catalogue)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from exchange.protocol import errors
from exchange.tools.platform import openapi, ws_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"

ERRORS_HEAD = """# Error codes

Generated from `exchange.protocol.errors.CATALOGUE` by `voltbourse docs` (a test keeps it
equal). Every refusal carries one of these codes: on the WebSocket as
`{"type": "error", "id": <request id>, "code": CODE, "message": text}`, over HTTP as
`{"error": CODE, "message": text, "request_id": id}` with the HTTP status below (the same
id in the `X-Request-Id` header: [rest.md](rest.md#errors)). Engine reasons are
explained in [engine.md](engine.md).

"""


def documents() -> dict[str, str]:
    """File name -> content, as committed under docs/."""
    return {
        "openapi.json": json.dumps(openapi(), indent=2, ensure_ascii=False) + "\n",
        "ws-schema.json": json.dumps(ws_schema(), indent=2, sort_keys=True) + "\n",
        "errors.md": ERRORS_HEAD + errors.markdown_table(),
    }


def cmd_docs(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    stale = []
    for name, text in documents().items():
        path = target / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run `voltbourse docs`)", file=sys.stderr)
        return 1
    return 0


def add_commands(sub: Any, bench_sub: Any) -> None:
    p = sub.add_parser("docs", help="write the generated API references (OpenAPI, WebSocket schema, errors)")
    p.add_argument("--check", action="store_true", help="only check that the committed files are up to date")
    p.add_argument("--dir", default=str(DOCS), help="target folder (default: docs/ of the checkout)")
    p.set_defaults(func=cmd_docs)
