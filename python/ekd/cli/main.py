"""``ekd <verb>``: parses arguments, loads the configuration, calls the library. Nothing else.

Every verb has a Python equivalent with the same name (``ekd run`` -> :func:`ekd.workflow.run`,
``ekd train`` -> :meth:`ekd.workflow.Run.train_group`, ...). Each verb family is one module of this
package with its parser beside it (``add_parsers``); this module assembles them and reports errors.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import data, deploy, md, score, status, workflow
from .common import DEBUG_HELP
from .errors import expected, message

#: the verb families, in the order ``ekd --help`` lists their verbs
FAMILIES = (workflow, status, data, deploy, score, md)


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line form of every other error (the verb's --help has the rest)."""

    def error(self, message: str):
        self.exit(2, f"ekd: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ekd", description="Ensemble knowledge distillation of HIPNN potentials")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="verb", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return p


def main(argv=None) -> int:
    """``ekd <verb>``. An error that ekd expects (a bad input, a busy or inconsistent run
    directory, a full disk, ...) prints one line ``ekd: error: <message>`` and returns 2; with
    ``--debug`` its traceback too. Anything else is a bug: traceback, a request to report it, 1."""
    args = parser().parse_args(argv)
    from ..jobs import terminate_on_sigterm

    terminate_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ekd: interrupted; finished work is kept, run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if expected(e):
            if args.debug:
                traceback.print_exc()
            print(f"ekd: error: {message(e)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            "ekd: internal error: this is a bug in ekd, not a problem with your input; please report it "
            "with the traceback above and the command you ran",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
