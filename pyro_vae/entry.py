"""The ``pyro-vae`` command's entry point: Ctrl-C while torch and Pyro load is one line.

Loading the libraries takes seconds. A KeyboardInterrupt raised inside an import can surface
as a traceback of another kind (a half-initialised module: AttributeError, RecursionError);
so until the command line is loaded, Ctrl-C ends the process at once, with one line and exit
status 130 (nothing has been written yet). Then :func:`pyro_vae.cli.main` handles it.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130


def _interrupted_while_loading(signum, frame) -> None:
    try:
        os.write(2, b"\npyro-vae: interrupted while starting; nothing was written\n")
    finally:
        os._exit(INTERRUPTED)


def main() -> int:
    previous = signal.getsignal(signal.SIGINT)
    guarded = previous is signal.default_int_handler  # not ignored, not handled elsewhere
    if guarded:
        signal.signal(signal.SIGINT, _interrupted_while_loading)
    from pyro_vae.cli import main as run

    if guarded:
        signal.signal(signal.SIGINT, previous)
    return run()


if __name__ == "__main__":
    sys.exit(main())
