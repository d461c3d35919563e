"""The `lapsynth` command that pip installs: one entry point, a subcommand per program.

    lapsynth render ARGS       python blender_addon/render.py ARGS   (needs bpy: the [render] extra)
    lapsynth meshes ARGS       python -m backend.meshes ARGS
    lapsynth frames ARGS       python -m backend.frames ARGS
    lapsynth train ARGS        python -m backend.train ARGS
    lapsynth translate ARGS    python -m backend.translate ARGS
    lapsynth segment ARGS      python -m backend.segment ARGS
    lapsynth evaluate ARGS     python -m backend.evaluate ARGS
    lapsynth efficacy ARGS     python -m backend.efficacy ARGS
    lapsynth stats ARGS        python -m backend.stats ARGS

`lapsynth COMMAND --help` lists a command's options; the `python -m` forms and torchrun's `-m backend.train`
work as before. Only `render` needs bpy; it runs render.py in this interpreter, as the script form does.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

PROG = "lapsynth"
BACKEND = ("meshes", "frames", "train", "translate", "segment", "evaluate", "efficacy", "stats")
COMMANDS = ("render", *BACKEND)


def _render(args: list[str]) -> int:
    """Replace this process by render.py (signals, exit status and progress exactly as the script's)."""
    if importlib.util.find_spec("bpy") is None:
        print(f"{PROG} render: error: the bpy module is not installed in {sys.executable} (install "
              f"lapsynth[render] on Python 3.11 or 3.13, or run blender -b -P blender_addon/render.py -- ARGS)",
              file=sys.stderr)
        return 2
    spec = importlib.util.find_spec("blender_addon")  # located, not imported: the backend never imports bpy
    script = Path(spec.origin).parent / "render.py"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, str(script), *args])
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--version":
        from blender_addon.core import __version__

        print(f"{PROG} {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{PROG}: error: unknown command {command!r} (choose one of {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if command == "render":
        return _render(args)
    module = importlib.import_module(f"backend.{command}")
    module.PROG = f"{PROG} {command}"  # its usage and error lines name the command the user typed
    return module.main(args)


if __name__ == "__main__":
    sys.exit(main())
