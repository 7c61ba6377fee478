"""The package's shape: layers as folders, each importing only from the layers below it; no import cycles;
no imports inside functions except of optional dependencies. Read from the source (nothing is imported)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "quicknets_jax"
# A layer may import the layers of lower rank; layers of one rank are independent of each other.
LAYERS = {"core": 0, "data": 1, "models": 1, "training": 2, "algorithms": 3, "reporting": 3, "workflows": 4}
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
      if source_layer is None:  # the package's face sits above every layer: it may hand on any name
        continue
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
  tree = ast.parse("from quicknets_jax.workflows import experiment\ndef f():\n  import numpy\n")
  found = _imports("quicknets_jax.core.x", tree, {"quicknets_jax.workflows.experiment", "quicknets_jax.workflows"})
  assert found == [("quicknets_jax.workflows.experiment", 1, False), ("numpy", 3, True)]
  assert LAYERS["core"] < LAYERS["workflows"]


_IMPORT_EVERYTHING = """
import importlib, json, logging, os, pkgutil, sys
import jax, flax, optax, orbax.checkpoint, chex  # what they do on import (jax sets TF_CPP_MIN_LOG_LEVEL) is theirs
before = dict(os.environ)
absl_level = logging.getLogger("absl").level
import quicknets_jax
names = [m.name for m in pkgutil.walk_packages(quicknets_jax.__path__, "quicknets_jax.")]
for name in names:
  importlib.import_module(name)
from jax._src import xla_bridge
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps(dict(modules=len(names), changed=changed, backends=xla_bridge.backends_are_initialized(),
                      absl=logging.getLogger("absl").level == absl_level)))
"""


def test_importing_the_package_changes_nothing_in_the_process():
  """Every module imported, in a fresh process: the environment (XLA_FLAGS included) is as its dependencies
  left it, no JAX backend has started and logging is untouched; `configure_cpu()` is the one call that
  sets the flags."""
  import json
  import subprocess
  import sys

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["modules"] > 40
  assert report["changed"] == [] and not report["backends"] and report["absl"], report
  from quicknets_jax.core.platform import CPU_FLAGS, configure_cpu

  environ = {"XLA_FLAGS": "--xla_foo=1"}
  assert configure_cpu(environ) == list(CPU_FLAGS) and environ["XLA_FLAGS"].startswith("--xla_foo=1 ")
  assert configure_cpu(environ) == []  # already there: nothing added twice
