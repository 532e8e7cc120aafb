"""``python -m samkit.geo {vectorize,prompt,info} ...``: the ``samkit geo`` commands on their own."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from .cli import add_commands
    from .errors import GeoError

    parser = argparse.ArgumentParser(prog="python -m samkit.geo", description="samkit GIS commands")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    args = parser.parse_args(["geo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except GeoError as exc:
        print(f"samkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("samkit: interrupted; finished tiles are kept, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
