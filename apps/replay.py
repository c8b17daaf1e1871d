"""``xas-replay``: re-emit a stored XAS run's documents; write it as XDI for Larch/Athena."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from httpx import HTTPError

from endstation.catalog import CatalogError, open_catalog
from endstation.replay import replay
from endstation.xdi import write_xdi

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``xas-replay UID [--catalog URI] [--api-key KEY] [--xdi FILE] [--print]``."""
    parser = argparse.ArgumentParser(
        prog="xas-replay",
        description="Re-emit a stored XAS run's documents (optionally write it as XDI 1.0).",
    )
    parser.add_argument("uid", help="uid of the run (start document)")
    parser.add_argument("--catalog", help="Tiled URI or local catalog folder (default $XAS_TILED_URI, else the "
                                          "local catalog)")
    parser.add_argument("--api-key", help="Tiled api key (default $XAS_TILED_API_KEY)")
    parser.add_argument("--xdi", metavar="FILE", help="write the run as an XDI 1.0 file")
    parser.add_argument("--print", dest="show", action="store_true",
                        help="print every document as one JSON line [name, doc]")
    args = parser.parse_args(argv)

    try:
        catalog = open_catalog(args.catalog, api_key=args.api_key, create=False)
        counts: dict[str, int] = {}

        def show(name: str, doc: dict) -> None:
            counts[name] = counts.get(name, 0) + 1
            if args.show:
                print(json.dumps([name, doc]))

        docs = replay(args.uid, [show], catalog=catalog)
        if args.xdi:
            path = write_xdi(docs, args.xdi)
            print(f"wrote {path}", file=sys.stderr)
    except (CatalogError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"xas-replay: error: {message}", file=sys.stderr)
        return 2
    except HTTPError as exc:  # the catalog answered, but not with the run (Tiled's ClientError too)
        print(f"xas-replay: error: reading run {args.uid} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    stop = next((doc for name, doc in docs if name == "stop"), {})
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    print(f"run {args.uid}: {summary}; exit_status {stop.get('exit_status', 'unknown')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
