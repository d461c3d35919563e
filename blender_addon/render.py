"""Render a Domain A data set headless.

    python blender_addon/render.py --meshes meshes --out data/A [options]       (bpy module)
    blender -b -P blender_addon/render.py -- --meshes meshes --out data/A ...    (Blender)

`--help` lists every option. Errors are one line on stderr and exit status 2; nothing is
written before all inputs were checked.
"""
import importlib
import os
import sys


def _script_args() -> list:
    argv = sys.argv
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    # `python render.py ARGS`: argv[0] is this script; inside Blender it is the Blender binary.
    return argv[1:] if argv and argv[0].endswith(".py") else []


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))
    package = os.path.basename(here)  # 'blender_addon' in the repository, the extension id when installed
    config = importlib.import_module(f"{package}.config")
    prog = "render.py"
    settings_args = _script_args() if argv is None else argv
    try:
        settings = config.settings_from_args(settings_args, prog)
    except config.ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    pipeline = importlib.import_module(f"{package}.pipeline")
    errors = tuple(getattr(importlib.import_module(f"{package}.{mod}"), name) for mod, name in (
        ("dataset", "DatasetError"), ("geometry", "MeshError"), ("engine", "DeviceError"),
        ("sampling", "SamplingError"), ("config", "ConfigError")))
    # Stop between frames on SIGINT/SIGTERM through a flag: a KeyboardInterrupt raised while bpy renders
    # is swallowed by Blender (the run went on), so nothing may rely on it. The handlers are re-armed
    # before every frame in case Blender replaced them.
    import signal

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
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished frames are kept and a re-run resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
