"""The package is layered: a room (a subpackage of exit_jax) imports only rooms below it, lazy imports inside
functions included, and the library never imports gin, the launchers or the studies. The order, bottom up
(README, "Layout"):

    storage < models < sampling < envs < curriculum < rl < tpu < training < evaluation < testing

Run alone: `python -m pytest tests/test_layers.py`.
"""
import ast
import pathlib

ROOMS = ("storage", "models", "sampling", "envs", "curriculum", "rl", "tpu", "training", "evaluation", "testing")
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "exit_jax"
OUTSIDE = ("gin", "gin_cli", "bench_util", "launch", "studies")  # edges: never imported by the library


def _room(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    return path.relative_to(package).parts[0].removesuffix(".py")


def _imports(path: pathlib.Path):
    """(line, imported module) of every import in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write it absolute"
            if node.module == "exit_jax":  # from exit_jax import storage, models
                yield from ((node.lineno, f"exit_jax.{a.name}") for a in node.names)
            else:
                yield node.lineno, node.module


def upward_imports(package: pathlib.Path = PACKAGE) -> list:
    """'file:line imports X' for every import that reaches a room above its own or outside the library."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.parent == package and path.name == "__init__.py":
            continue
        room = _room(path, package)
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in OUTSIDE:
                found.append(f"{path.relative_to(package.parent)}:{line} imports {module}")
            elif top == "exit_jax" and "." in module:
                other = module.split(".")[1]
                if ROOMS.index(other) > ROOMS.index(room):
                    found.append(f"{path.relative_to(package.parent)}:{line} ({room}) imports {module}")
    return found


def test_every_room_is_listed():
    rooms = {_room(p) for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"}
    assert rooms == set(ROOMS)


def test_no_room_imports_one_above_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check can fail: an envs module reaching up into curriculum, or any module importing gin."""
    probe = tmp_path / "exit_jax" / "envs"
    probe.mkdir(parents=True)
    (probe / "probe.py").write_text("import gin\n\n\ndef f():\n    from exit_jax.curriculum import prompts\n")
    assert upward_imports(tmp_path / "exit_jax") == ["exit_jax/envs/probe.py:1 imports gin",
                                                      "exit_jax/envs/probe.py:5 (envs) imports exit_jax.curriculum"]
