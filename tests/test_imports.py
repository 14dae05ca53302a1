"""No import cycle among the modules of the sparsejax package.

Every `import` and `from ... import` statement counts, at module level or inside a function (a function-level import
that closes a cycle is a cycle all the same: it only moves the failure from import time to call time). An edge goes to
the module an import names: `from sparsejax import masks` to `sparsejax.masks`, `from sparsejax.masks import
summary` to `sparsejax.masks`, `import sparsejax as sj` and `from sparsejax import __version__` to the package
`sparsejax` itself. Parent packages that Python initialises on the way are not edges: every package's `__init__`
imports its submodules, so counting them would make each package a cycle with everything in it.
"""
import ast
import os
import pkgutil

import sparsejax


def _modules(paths, prefix) -> dict:
  """{module name: (source file, is a package)} for every module under `paths`, found without importing any."""
  out = {}
  for info in pkgutil.iter_modules(paths, prefix):
    base = os.path.join(info.module_finder.path, info.name.rsplit(".", 1)[-1])
    if info.ispkg:
      out[info.name] = (os.path.join(base, "__init__.py"), True)
      out.update(_modules([base], info.name + "."))
    else:
      out[info.name] = (base + ".py", False)
  return out


def _package_modules() -> dict:
  root = os.path.dirname(sparsejax.__file__)
  return {"sparsejax": (os.path.join(root, "__init__.py"), True), **_modules([root], "sparsejax.")}


def _known(name: str, modules) -> str:
  """The innermost module of the package that `name` is or lies in (None outside the package)."""
  while name not in modules and "." in name:
    name = name.rsplit(".", 1)[0]
  return name if name in modules else None


def imports_of(name: str, source: str, is_package: bool, modules) -> dict:
  """{imported module of the package: first line importing it} for the module `name` with this source."""
  out = {}
  for node in ast.walk(ast.parse(source)):
    targets = []
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package that holds this module
        parts = name.split(".")[:len(name.split(".")) - node.level + int(is_package)]
        base = ".".join(parts + ([base] if base else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    for target in targets:
      known = _known(target, modules)
      if known is not None and known != name:
        out.setdefault(known, node.lineno)
  return out


def import_graph(modules) -> dict:
  graph = {}
  for name, (path, is_package) in modules.items():
    with open(path, encoding="utf-8") as f:
      graph[name] = imports_of(name, f.read(), is_package, modules)
  return graph


def find_cycles(graph: dict) -> list:
  """One cycle (a list of modules, the first repeated at the end) per strongly connected component with more than
  one module (Tarjan's algorithm, iterative)."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph[child]))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = set()
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.add(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(component)
  return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph, component) -> list:
  """A shortest cycle through the first module (by name) of a strongly connected component (breadth-first)."""
  start = min(component)
  parents, frontier = {start: None}, [start]
  while frontier:
    following = []
    for node in frontier:
      for child in sorted(graph[node]):
        if child == start:
          path = [node]  # back to start through the parents, then reversed
          while parents[path[-1]] is not None:
            path.append(parents[path[-1]])
          return path[::-1] + [start]
        if child in component and child not in parents:
          parents[child] = node
          following.append(child)
    frontier = following
  raise AssertionError(f"no cycle found in {sorted(component)}")


def _describe(graph, cycle) -> str:
  return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_package_has_no_import_cycle():
  modules = _package_modules()
  assert {"sparsejax", "sparsejax.train", "sparsejax.lottery", "sparsejax.tickets", "sparsejax.pruners.pai"} <= set(
      modules)
  graph = import_graph(modules)
  assert "sparsejax.train" in graph["sparsejax.lottery"]  # the graph is not empty by mistake
  cycles = find_cycles(graph)
  assert not cycles, "import cycles: " + "; ".join(_describe(graph, c) for c in cycles)


def test_the_library_modules_do_not_import_the_engine():
  graph = import_graph(_package_modules())
  engine = {"sparsejax.train", "sparsejax.lottery", "sparsejax.checkpoint", "sparsejax.launch", "sparsejax.report"}
  for name in ("sparsejax.tickets", "sparsejax.transform", "sparsejax.masks"):
    assert not engine & set(graph[name]), (name, sorted(engine & set(graph[name])))


def test_a_cycle_through_a_function_level_import_is_found_and_named():
  modules = {"pkg": None, "pkg.a": None, "pkg.b": None, "pkg.c": None, "pkg.sub": None, "pkg.sub.d": None}
  sources = {
      "pkg": ("from pkg import a\n", True),
      "pkg.a": ("import os\nfrom pkg import b\n", False),
      "pkg.b": ("def f():\n  from . import c\n  return c\n", False),
      "pkg.c": ("from pkg.a import thing\n", False),
      "pkg.sub": ("from .d import x\n", True),
      "pkg.sub.d": ("from .. import c\n", False),
  }
  graph = {name: imports_of(name, src, pkg, modules) for name, (src, pkg) in sources.items()}
  assert graph["pkg.b"] == {"pkg.c": 2} and graph["pkg.sub"] == {"pkg.sub.d": 1} and graph["pkg.sub.d"] == {
      "pkg.c": 1}
  assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
  assert _describe(graph, ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]) == (
      "pkg.a (line 2) -> pkg.b (line 2) -> pkg.c (line 1) -> pkg.a")
  graph["pkg.b"] = {}
  assert find_cycles(graph) == []


def test_the_engine_finds_every_driver_by_name():
  from sparsejax import train  # pylint: disable=g-import-not-at-top (the engine's heavier imports, only here)
  assert set(train.DRIVERS) == {"imp", "posttrain", "init_from", "start_from"}
  for name in train.DRIVERS:
    assert callable(train.driver(name)), name
  from sparsejax import lottery  # pylint: disable=g-import-not-at-top
  assert train.driver("imp") is lottery.run_lottery
