"""``xas-rank-service``: the ranking callback in another process, between two 0MQ proxy ports.

See :mod:`xas_callbacks.remote` for what it does; this is its command line::

    xas-rank-service --listen proxy-host:5568 --publish proxy-host:5567 [--candidates PATH --model cu-k]
"""

from __future__ import annotations

import argparse
import logging
import sys

from xas_callbacks.remote import ranking_service

__all__ = ["main"]

logger = logging.getLogger("xas-rank-service")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xas-rank-service", description="Rank each XAS run published to a 0MQ proxy and publish the ranking back (JSON, never pickle).")
    parser.add_argument("--listen", required=True, help="proxy outbound address host:port (documents in)")
    parser.add_argument("--publish", required=True, help="proxy inbound address host:port (rankings out)")
    parser.add_argument("--candidates", default=None, help="candidate set (folder, SMILES file, saved .npz)")
    parser.add_argument("--model", default=None, help="model predicting the candidates (e.g. cu-k)")
    parser.add_argument("--prefix", default="", help="0MQ topic prefix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    library = None
    if args.candidates:
        from xas_callbacks.candidates import CandidateLibrary

        library = CandidateLibrary.from_source(args.candidates, model=args.model)
        logger.info("%d candidates from %s (%d failed)", len(library), args.candidates, len(library.failures))
    service = ranking_service(args.listen, args.publish, library=library, prefix=args.prefix.encode())
    print(f"ranking service: documents from {args.listen}, rankings to {args.publish}", flush=True)
    try:
        service.start()
    except KeyboardInterrupt:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
