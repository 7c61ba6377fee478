"""The named random streams never share a number: two uses of a seed's key never draw the same bits."""

from quicknets_jax.core import rng


def test_every_stream_has_its_own_number():
  names = list(rng.Stream.__members__)  # aliases (two names, one value) are listed here, not in the enum
  values = [int(rng.Stream[name]) for name in names]
  assert len(set(values)) == len(values), dict(zip(names, values))


def test_the_numbered_stream_is_the_last_so_its_items_meet_no_other_stream():
  others = [int(s) for s in rng.Stream if s is not rng.Stream.RECOMMIT]
  assert int(rng.Stream.RECOMMIT) > max(others)


def test_streams_give_different_keys():
  key = rng.seed_key(0)
  keys = {tuple(int(v) for v in rng.stream(key, s).ravel()) for s in rng.Stream}
  assert len(keys) == len(rng.Stream)
