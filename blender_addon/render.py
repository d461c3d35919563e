"""Render a Domain A data set headless.

    python blender_addon/render.py --meshes meshes --out data/A [options]       (bpy module)
    blender -b -P blender_addon/render.py -- --meshes meshes --out data/A ...    (Blender)

`--help` lists every option. Errors are one line on stderr and exit status 2; nothing is
written before all inputs were checked.
"""
import os
import signal
import sys

if not __package__:
    # Run as a script (`python render.py`, `blender -P render.py`): import this folder as the package it
    # is ('blender_addon' in the repository, the extension id when installed), so that the relative
    # imports below are plain imports (PEP 366).
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
        sys.path.pop(0)  # the script's folder: its modules must not also import as top-level ones
    sys.path.insert(0, os.path.dirname(_here))
    __package__ = os.path.basename(_here)
    __import__(__package__)

from . import pipeline  # noqa: E402
from .config import settings_from_args  # noqa: E402
from .core.errors import InputError  # noqa: E402  (every refusal: bad settings, meshes, data set, device)

PROG = "render.py"


def _script_args() -> list:
    argv = sys.argv
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    # `python render.py ARGS`: argv[0] is this script; inside Blender it is the Blender binary.
    return argv[1:] if argv and argv[0].endswith(".py") else []


def main(argv=None) -> int:
    prog = PROG
    try:
        settings = settings_from_args(_script_args() if argv is None else argv, prog)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    # Stop between frames on SIGINT/SIGTERM through a flag: a KeyboardInterrupt raised while bpy renders
    # is swallowed by Blender (the run went on), so nothing may rely on it. The handlers are re-armed
    # before every frame in case Blender replaced them.
    stop = []

    def handle(sig, _frame):
        stop.append(sig)

    def should_stop() -> bool:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handle)
        return bool(stop)

    should_stop()
    try:
        pipeline.run(settings, should_stop=should_stop)
        if stop:
            print(f"{prog}: stopped by signal {stop[0]}; finished frames are kept and a re-run resumes",
                  file=sys.stderr)
            return 128 + int(stop[0])
    except InputError as e:
        notes = "".join(f"; {n}" for n in getattr(e, "__notes__", ()))  # what failed beside it (pipeline.py)
        print(f"{prog}: error: {e}{notes}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished frames are kept and a re-run resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
