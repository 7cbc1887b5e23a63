"""The tree's layers hold: requests walk down (faces → web → core → db, providers → sandbox), never up.

Every `import agentbox...` of every module is read (those under TYPE_CHECKING too: a type is a
dependency as well), so a change that makes a package reach up or round in a circle fails here
with the import that does it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import agentbox

ROOT = Path(agentbox.__file__).parent
FACES = {"api", "e2b_api", "mcp"}
#: What each lower package may import of agentbox (besides itself). The faces, server and cli are above all.
BELOW: dict[str, set[str]] = {
    "errors": set(),
    "egress": {"errors"},
    "wire": {"errors", "sandbox", "egress"},
    "sandbox": {"errors"},
    "db": {"errors", "wire"},
    "providers": {"errors", "egress", "sandbox", "wire"},
    "config": {"errors", "wire", "github"},
    "github": {"errors", "db", "sandbox", "wire"},
    "auth": {"errors", "db", "wire"},
    "vault": {"errors", "db", "github", "wire"},
    "workspaces": {"errors", "config", "db", "egress", "github", "providers", "sandbox", "wire"},
    "web": {"errors", "auth", "config", "db", "github", "sandbox", "vault", "wire", "workspaces"},
}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "agentbox"


def imports() -> dict[str, set[tuple[str, str]]]:
    """package -> {(importing module, imported module)} across packages."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        module = ".".join(("agentbox", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentbox"):
                names = [f"agentbox.{a.name}" for a in node.names] if node.module == "agentbox" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("agentbox")]
            for name in names:
                if package_of(name) != package_of(module):
                    found[package_of(module)].add((module, name))
    return found


def test_lower_packages_import_only_what_is_below_them() -> None:
    found = imports()
    climbs = [
        f"{importer} imports {imported}"
        for package, allowed in BELOW.items()
        for importer, imported in sorted(found.get(package, ()))
        if package_of(imported) not in allowed
    ]
    assert not climbs, "imports that climb the tree:\n" + "\n".join(climbs)


def test_the_faces_are_siblings_over_the_core() -> None:
    found = imports()
    crossing = [
        f"{importer} imports {imported}"
        for face in FACES
        for importer, imported in sorted(found.get(face, ()))
        if package_of(imported) in FACES | {"server", "cli", "client"}
        # the faces reach the core's handles and the manager, never its store
        or imported.startswith(("agentbox.db.store", "agentbox.providers.docker"))
    ]
    assert not crossing, "a face reaching across or past the core:\n" + "\n".join(crossing)


def test_no_package_imports_in_a_circle() -> None:
    found = imports()
    edges = {package: {package_of(imported) for _, imported in pairs} for package, pairs in found.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges.get(start, ())
        )

    circles = sorted(package for package in edges if reaches(package, package, {package}))
    assert not circles, f"packages in an import circle: {circles}"
