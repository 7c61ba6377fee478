"""The one exception type the data layer raises for bad or missing input.

It subclasses ValueError so callers that already catch ValueError keep working; every message is one
line and names the fix.
"""


class DataError(ValueError):
  """A dataset file, directory, array or argument is missing, malformed or inconsistent."""
