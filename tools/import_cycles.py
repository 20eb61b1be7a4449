#!/usr/bin/env python
"""Find import cycles inside a package, function-level and ``TYPE_CHECKING`` imports included.

  tools/import_cycles.py [PACKAGE_DIR]      # default: repseg; exit 1 if a cycle is found

Reads the source with ``ast`` (nothing is imported), so an import hidden in a function
body counts as much as one at the top: it is still a dependency, only a later one.
``from . import name`` and ``from .pkg import name`` depend on the submodule ``name``
when it exists, else on the package's ``__init__``; a package is not taken to depend on
the submodules that import it by being their parent (Python initialises parents first).
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_names(package_dir: Path) -> dict:
    """Dotted module name -> source file, for every ``.py`` file of the package."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        names['.'.join(parts)] = path
    return names


def _imported(node: ast.AST, module: str, is_package: bool, known: dict) -> list:
    """The package's modules that one import statement depends on."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = node.module or ''
    if node.level:
        anchor = module.split('.') if is_package else module.split('.')[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = '.'.join(anchor + ([base] if base else []))
    if base not in known:
        return []
    submodules = [f'{base}.{alias.name}' for alias in node.names
                  if f'{base}.{alias.name}' in known]
    plain = [alias for alias in node.names if f'{base}.{alias.name}' not in known]
    return submodules + ([base] if plain else [])


def import_graph(package_dir: Path) -> dict:
    """Module -> the set of the package's modules it imports anywhere in its source."""
    known = module_names(package_dir)
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(_imported(node, module, path.name == '__init__.py', known))
        targets.discard(module)
        graph[module] = targets
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('package', nargs='?',
                        default=str(Path(__file__).resolve().parents[1] / 'repseg'))
    args = parser.parse_args(argv)
    graph = import_graph(Path(args.package))
    found = cycles(graph)
    for component in found:
        print('cycle: ' + ' <-> '.join(component))
    print(f'{len(graph)} modules, {sum(map(len, graph.values()))} imports, '
          f'{len(found)} import cycle(s)')
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main())
