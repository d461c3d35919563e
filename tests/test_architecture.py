"""The layout's rules, checked on the source (no imports executed):

- `blender_addon/core` is pure: standard library and numpy at module level (PIL/imageio only inside
  functions, as optional extras), and nothing of the add-on outside core;
- `backend` may use the add-on only through `blender_addon.core`, and never imports bpy;
- backend stages do not import each other (segmenter may use common; commands may use stages);
- no import cycles among the project's modules, counting imports inside functions too.
"""
import ast
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("blender_addon", "backend")
STDLIB = set(sys.stdlib_module_names)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of a file, relative ones
    resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if not __package__:` blocks in scripts count as module level
        if isinstance(node, ast.If):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            at_top = id(node) in top_level
            out.append((mod, node.lineno, at_top))
            for a in node.names:  # `from . import png` imports a module
                out.append((f"{mod}.{a.name}", node.lineno, at_top))
    return out


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import refers to (a name imported from a module maps to the module)."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def test_core_is_pure():
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        if not name.startswith("blender_addon.core"):
            continue
        for target, line, top in imports_of(path, name):
            root = target.split(".")[0]
            own = resolve(target, modules)
            if own is not None and not own.startswith("blender_addon.core") and own != "blender_addon":
                bad.append(f"{path.name}:{line} imports {target} (outside core)")
            elif own is None and root not in STDLIB and root != "numpy" and (top or root not in ("PIL", "imageio")):
                bad.append(f"{path.name}:{line} imports {target}")
    assert not bad, bad


def test_backend_uses_only_the_addon_core_and_never_bpy():
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        if not name.startswith("backend"):
            continue
        for target, line, _ in imports_of(path, name):
            if target.split(".")[0] in ("bpy", "mathutils"):
                bad.append(f"{path}:{line} imports {target}")
            own = resolve(target, modules)
            if own and own.startswith("blender_addon") and not own.startswith("blender_addon.core"):
                bad.append(f"{path}:{line} imports {target} (only blender_addon.core is shared)")
    assert not bad, bad


def test_backend_stages_do_not_import_each_other():
    allowed = {"patients": set(), "translator": set(), "segmenter": {"common"}, "common": set()}
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        parts = name.split(".")
        if parts[0] != "backend" or len(parts) < 3:
            continue
        stage = parts[1]
        for target, line, _ in imports_of(path, name):
            own = resolve(target, modules) or ""
            other = own.split(".")
            if other[0] == "backend" and len(other) >= 2 and other[1] in allowed and other[1] != stage \
                    and other[1] not in allowed[stage] | {"common"}:
                bad.append(f"{path}:{line}: {stage} imports {own}")
            if other[0] == "backend" and len(other) == 2 and other[1] not in allowed:
                bad.append(f"{path}:{line}: a stage imports the command module {own}")
    assert not bad, bad


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, _, _ in imports_of(path, name):
            own = resolve(target, modules)
            # A package's __init__ is imported on the way to its modules; it is not a dependency edge of
            # its own children (that would make every package with an __init__ import a "cycle").
            if own and own != name and not name.startswith(own + "."):
                deps.add(own)
        graph[name] = deps
    return graph


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_one_version_string():
    """blender_manifest.toml holds it; the package, the installed metadata and the data sets read it."""
    from importlib.metadata import version

    import blender_addon
    from blender_addon.core import __version__

    manifest = (ROOT / "blender_addon" / "blender_manifest.toml").read_text()
    assert f'version = "{__version__}"' in manifest
    assert blender_addon.__version__ == __version__ == version("lapsynth")
    sources = [p for p in (ROOT / "blender_addon").rglob("*.py")] + [p for p in (ROOT / "backend").rglob("*.py")]
    assert not [p for p in sources if f'"{__version__}"' in p.read_text()], "a version string written twice"
