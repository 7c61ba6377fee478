"""Sphinx configuration of the quicknets-jax documentation.

Build (every warning, broken reference and unresolved API name fails the build):

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

Pages are MyST Markdown; the API reference is autodoc over the package's Google-style docstrings
(napoleon). Nothing is fetched from the network: there is no intersphinx, and the third-party types
that the signatures and docstrings name are listed in `nitpick_ignore_regex` below.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the package and the `experiments` entry points, also without `pip install -e .`

import quicknets_jax  # noqa: E402

project = "quicknets-jax"
author = "quicknets-jax authors"
copyright = "quicknets-jax authors"
release = quicknets_jax.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# ------------------------------------------------------------------------------------------ MyST

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve, and are checked

# ---------------------------------------------------------------------------- autodoc, napoleon

autosummary_generate = False  # the API page lists its modules itself: no generated stub pages
autodoc_typehints = "none"  # types are in the docstrings' prose; signatures name no third-party classes
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}  # no "Bases:" lines: most bases are third-party classes
autodoc_preserve_defaults = True  # defaults shown as written (`FitConfig()`), not as object reprs
autoclass_content = "class"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a class's Attributes section is a field list, not a second set of targets
napoleon_use_rtype = False  # "Returns:" prose stays prose: no cross-reference is made of its first words
napoleon_use_param = True
napoleon_preprocess_types = False
napoleon_attr_annotations = False  # an attribute's type is in its prose; annotations may name private classes

# The docstrings write code in single backticks, as Markdown does; in reStructuredText that is the
# "title reference" role. Render it as code instead (a literal), as the Markdown pages do.
default_role = "code"

# ------------------------------------------------------------------------------------ nitpicking

nitpicky = True
# Third-party names with no inventory offline (no intersphinx: the build must not need the network).
nitpick_ignore_regex = [
  (r"py:.*", r"(jax|jaxlib|jnp|flax|nn|nnx|optax|orbax|chex|numpy|np|grain|array_record|tfds)(\..*)?"),
  (r"py:.*", r"(tensorflow_datasets|tensorboardX|matplotlib|PIL|absl)(\..*)?"),
  (r"py:.*", r"(typing|collections|dataclasses|enum|os|pathlib|concurrent|threading|subprocess)(\..*)?"),
  (r"py:class", r"PyTree"),  # jax's nested containers of arrays, as the signatures name them
]

# ------------------------------------------------------------------------------------------ HTML

html_theme = "furo"
html_title = f"quicknets-jax {release}"
html_static_path = []
pygments_style = "sphinx"


# ------------------------------------------------------------------- docstrings as written here
#
# The docstrings are Google style with a few habits of plain text that reStructuredText reads otherwise;
# they are adjusted before napoleon reads them (nothing in the source changes):
# - `|T_j|` (a set's size) would be a substitution reference: the bars are escaped;
# - "`Split`s" (a code span followed by a letter) would leave the span open: it is closed with "\ ";
# - "a, b: what they are" in an Attributes section names two fields: each gets its own entry;
# - "block_" (a word ending in an underscore) would be a hyperlink reference: the underscore is escaped;
# - "*others" or "**kwargs" in prose would open an emphasis that never closes: the stars are escaped;
# - the first line of a property's or attribute's docstring is prose: napoleon would read the words before
#   its first colon as a type, so that colon becomes a dash.

_CODE_SPAN = re.compile(r"(``.*?``|`[^`]*`)")


def _outside_code(line: str, edit) -> str:
  """`edit` applied to the parts of `line` outside code spans."""
  parts = _CODE_SPAN.split(line)
  return "".join(part if i % 2 else edit(part) for i, part in enumerate(parts))


def _escape_bars(text: str) -> str:
  return re.sub(r"(?<!\\)\|", r"\\|", text)


def _escape_underscores(text: str) -> str:
  return re.sub(r"(?<=\w)_(?=[\s\"',.;:)\]]|$)", r"\\_", text)


def _escape_open_stars(text: str) -> str:
  def escape(match):
    stars = match.group(0)
    closes = re.search(rf"\w{re.escape(stars)}(?![\w*])", text[match.end() :])
    return stars if closes else "\\*" * len(stars)

  return re.sub(r"(?<![\w*\\])\*{1,2}(?=\w)", escape, text)


def _split_attribute_names(lines: list) -> list:
  out, in_attributes, i = [], False, 0
  while i < len(lines):
    line = lines[i]
    if re.fullmatch(r"\s*Attributes:\s*", line):
      in_attributes = True
    elif re.fullmatch(r"\s*[A-Z][A-Za-z ]*:\s*", line) or (line.strip() and not line.startswith((" ", "\t"))):
      in_attributes = False
    match = re.fullmatch(r"(\s+)(\w+(?:, \w+)+): (.*)", line) if in_attributes else None
    if not match:
      out.append(line)
      i += 1
      continue
    indent, names, first = match.group(1), match.group(2).split(", "), match.group(3)
    rest = []
    i += 1
    while i < len(lines) and lines[i].startswith(indent + " ") and lines[i].strip():
      rest.append(lines[i])
      i += 1
    for name in names:
      out.extend([f"{indent}{name}: {first}", *rest])
  return out


def _adjust_docstring(app, what, name, obj, options, lines):
  if what in ("attribute", "property", "data") and lines:
    head = lines[0]
    colon = _outside_code(head, lambda part: part.replace(":", "\0", 1)).find("\0")
    if colon > 0:
      lines[0] = head[:colon] + " \u2014" + head[colon + 1 :]
  lines[:] = _split_attribute_names(lines)
  for i, line in enumerate(lines):
    line = _outside_code(line, lambda part: _escape_open_stars(_escape_underscores(_escape_bars(part))))
    lines[i] = re.sub(r"(`[^`\s][^`]*`)(?=[A-Za-z0-9])", r"\1\\ ", line)


def _skip_tuple_field_aliases(app, what, name, obj, skip, options):
  """NamedTuple fields document themselves as "Alias for field number N": the class's Attributes say it
  better, so they are left out."""
  doc = getattr(obj, "__doc__", None) or ""
  if what == "class" and isinstance(doc, str) and re.fullmatch(r"Alias for field number \d+", doc.strip()):
    return True
  return skip


def setup(app):
  app.connect("autodoc-process-docstring", _adjust_docstring, priority=100)  # before napoleon (500)
  app.connect("autodoc-skip-member", _skip_tuple_field_aliases)
