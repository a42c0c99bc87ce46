"""``escnet serve``: its options come from :class:`~escnet.serve.settings.ServeSettings`."""

from __future__ import annotations

import argparse
import sys

from escnet.cli.common import add_settings_flags, settings_of
from escnet.serve.settings import ServeSettings


def serve(args: argparse.Namespace) -> int:
    from escnet.serve.app import serve

    settings = settings_of(args, ServeSettings, model=args.model)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        limit = "" if settings.rate_limit else " and consider --rate-limit (requests a second per client)"
        print(f"escnet: serving on {settings.host}: reachable from other machines; escnet serve "
              f"has no authentication, so put it behind a proxy that has{limit}", file=sys.stderr)
    serve(settings)
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP API and a web page for a model (pip install "
                       "'escnet[serve]')")
    p.add_argument("model", metavar="MODEL", nargs="?", default="", help="an exported .onnx file "
                   "(fastest), a run folder or a .pt checkpoint (none with --db: the labelling page alone)")
    add_settings_flags(p, ServeSettings)
    p.set_defaults(func=serve)


COMMANDS = (add_serve,)
