"""The house's floors, checked on every module's imports (at the top and inside functions): a
package imports only from floors below it, and `featurize` and `classifiers` only through their
package root, so their modules can be rearranged without touching any other package."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BELOW = {  # what each package may import of ours, besides itself
    "common": set(),
    "featurize": {"common"},
    "classifiers": {"common", "featurize"},
    "experiments": {"common", "featurize", "classifiers"},
    "serving": {"common", "featurize", "classifiers"},
}
ROOT_ONLY = {"featurize", "classifiers"}  # imported as `from featurize import name`, never a module of it


def imports_of_ours(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import of one of our packages in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in BELOW]


@pytest.mark.parametrize("package", sorted(BELOW))
def test_a_package_imports_only_the_floors_below_it_and_only_their_roots(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, name in imports_of_ours(path):
            top = name.split(".")[0]
            if top == package:
                continue
            if top not in BELOW[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name} (a floor not below {package})")
            elif top in ROOT_ONLY and name != top:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name} (not {top}'s root)")
    assert not wrong, "\n".join(wrong)


def test_the_cli_uses_featurize_and_classifiers_through_their_roots():
    wrong = [name for _, name in imports_of_ours(REPO / "cli.py") if name.split(".")[0] in ROOT_ONLY and "." in name]
    assert not wrong


def test_the_check_sees_a_violation(tmp_path):
    """The rule above can fail: an import of a module inside featurize, and one pointing up."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from featurize.store import Storage\n    import experiments.fit\n")
    assert imports_of_ours(module) == [(2, "featurize.store"), (3, "experiments.fit")]
