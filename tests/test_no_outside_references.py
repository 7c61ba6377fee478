"""Nothing in the repository points outside it: no file names a private planning document, a tracker's
issue number or a goal that is not written down here. Code, comments, flagfiles, tests, docs, results
files, README.md, BUILD.md and CHANGELOG.md say what they mean in their own words, or point at a page
of the repository (e.g. the method page, docs/method.md). Read from the files (nothing is imported)."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.relpath(os.path.abspath(__file__), ROOT)
PATTERNS = {
  "a private planning document": re.compile(r"design\.md|design §"),
  "an issue number": re.compile(r"\b[Ii]ssue \d+\b"),
  "a goal not written down here": re.compile(r"our\s+target", re.IGNORECASE),
  "a goal's constant": re.compile(r"TARGET_TRAIN_SECONDS_RATIO"),
}
# Folders that hold what tools make, never what the repository says (used without git only).
GENERATED = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "_build", "build", "runs", "workdirs", ".venv"}


def repository_files() -> list:
  """Paths (relative to the root) of the files the repository holds: git's tracked files plus the new ones
  it does not ignore (so a file is checked before its first commit); without git, every file outside the
  generated folders."""
  try:
    out = subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
      cwd=ROOT,
      capture_output=True,
      check=True,
    ).stdout
    return sorted({p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))})
  except (OSError, subprocess.CalledProcessError):
    paths = []
    for directory, folders, files in os.walk(ROOT):
      folders[:] = [f for f in folders if f not in GENERATED and not f.endswith(".egg-info")]
      paths += [os.path.relpath(os.path.join(directory, f), ROOT) for f in files]
    return sorted(paths)


def text_of(path: str):
  """The file's text, or None for a binary file (a NUL byte in it, or not UTF-8)."""
  with open(os.path.join(ROOT, path), "rb") as f:
    data = f.read()
  if b"\0" in data:
    return None
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return None


def hits_in(text: str) -> list:
  """[(line number, what it names, the line)] of every line of `text` that points outside the repository."""
  found = []
  for number, line in enumerate(text.splitlines(), 1):
    for what, pattern in PATTERNS.items():
      if pattern.search(line):
        found.append((number, what, line.strip()))
  return found


def test_no_file_points_outside_the_repository():
  paths = [p for p in repository_files() if p != THIS]
  assert len(paths) > 100  # the listing found the repository
  problems = []
  for path in paths:
    text = text_of(path)
    if text is not None:
      problems += [f"{path}:{number}: names {what}: {line[:160]}" for number, what, line in hits_in(text)]
  assert not problems, f"{len(problems)} line(s) point outside the repository:\n" + "\n".join(problems)


def test_the_scan_finds_what_it_guards_against():
  """The patterns themselves: each kind of reference is found, and ordinary words are not."""
  text = "\n".join(
    [
      "as " + "design" + ".md §2 says",  # split, so that this file does not name them itself
      "the design § 1 reading",
      "fixed in " + "iss" + "ue 8, see (" + "Iss" + "ue 15)",
      "Our " + "target is 2x",
      "TARGET_TRAIN_SECONDS_RATIO = 2.0",
      "the design of the cascade; an issue with padding; tissue 3; a target accuracy; our flags target it",
    ]
  )
  assert [number for number, _, _ in hits_in(text)] == [1, 2, 3, 4, 5]
  assert THIS == os.path.join("tests", "test_no_outside_references.py")
