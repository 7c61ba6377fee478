"""The package's shape: layers as folders, each importing only from the layers below it; no import cycles;
no imports inside functions except of optional dependencies. Read from the source (nothing is imported)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "quicknets_jax"
# A layer may import the layers of lower rank; layers of one rank are independent of each other.
LAYERS = {"core": 0, "data": 1, "models": 1, "training": 2, "algorithms": 3, "reporting": 3, "runs": 4}
# Imported inside functions on purpose: needed by one path only, slow to import, or absent where unused.
OPTIONAL = {"tensorflow_datasets", "tensorboardX", "PIL", "grain", "array_record"}


def _modules() -> dict:
  """{module name: parsed source} of every module of the package."""
  modules = {}
  for directory, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        with open(path) as f:
          modules[module] = ast.parse(f.read(), path)
  return modules


def _imports(module: str, tree: ast.AST, known: set) -> list:
  """[(imported module, line, inside a function)] of every import in `tree` (package modules resolved to
  the deepest module that exists; other imports by their top-level name)."""
  in_function = {
    id(node)
    for fn in ast.walk(tree)
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
    for node in ast.walk(fn)
  }
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{module}:{node.lineno}: use absolute imports"
      names = [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] == PACKAGE:
        while name not in known:
          name = name.rsplit(".", 1)[0]
      out.append((name, node.lineno, id(node) in in_function))
  return out


def _layer(module: str):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def _graph():
  modules = _modules()
  edges = {m: set() for m in modules}
  problems = []
  for module, tree in modules.items():
    for target, line, inside in _imports(module, tree, set(modules)):
      where = f"{module}:{line} imports {target}"
      if inside and target.split(".")[0] not in OPTIONAL:
        problems.append(f"{where} inside a function (only optional dependencies may be: {sorted(OPTIONAL)})")
      if not target.startswith(PACKAGE) or target == module:
        continue
      edges[module].add(target)
      source_layer, target_layer = _layer(module), _layer(target)
      if source_layer is None:
        problems.append(f"{where}: the package's __init__ imports nothing of the package")
      elif source_layer not in LAYERS or target_layer not in LAYERS:
        problems.append(f"{where}: every module lives in one of the layers {sorted(LAYERS)}")
      elif source_layer != target_layer and LAYERS[source_layer] <= LAYERS[target_layer]:
        problems.append(
          f"{where}: layer {source_layer} (rank {LAYERS[source_layer]}) may only import layers "
          f"below it, not {target_layer} (rank {LAYERS[target_layer]})"
        )
  return modules, edges, problems


def _cycles(edges: dict) -> list:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in edges:
    if v not in index:
      visit(v)
  return found


def test_every_layer_imports_only_the_layers_below_it():
  modules, _, problems = _graph()
  assert len(modules) > 40  # the walk found the package
  assert not problems, "\n".join(problems)


def test_no_import_cycles():
  _, edges, _ = _graph()
  assert not _cycles(edges), _cycles(edges)


def test_the_checks_catch_what_they_guard_against():
  """The graph checks themselves: a cycle and an upward import are found."""
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  tree = ast.parse("from quicknets_jax.runs import experiment\ndef f():\n  import numpy\n")
  found = _imports("quicknets_jax.core.x", tree, {"quicknets_jax.runs.experiment", "quicknets_jax.runs"})
  assert found == [("quicknets_jax.runs.experiment", 1, False), ("numpy", 3, True)]
  assert LAYERS["core"] < LAYERS["runs"]
