"""Download on first use, end to end against a local HTTP server on 127.0.0.1 serving files the test
writes: success, a kill mid-download then a rerun, a truncated body, a wrong checksum, 404, a transient
503, no server — and the datasets found in the cache afterwards without any server."""

import gzip
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import threading
import time

import fresh_process_checks
import numpy as np
import pytest

from quicknets_jax import data
from quicknets_jax.data import cifar, datasets, download
from quicknets_jax.data.download import RemoteFile
from quicknets_jax.data.errors import DataError
from quicknets_jax.data.idx import write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Server:
  """Serves `files` ({path: bytes}); `mode[path]` = "truncate" | "slow" | "503 once" alters a reply."""

  def __init__(self):
    self.files, self.mode, self.requests = {}, {}, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_GET(self):
        server.requests.append(self.path)
        body, mode = server.files.get(self.path), server.mode.get(self.path)
        if body is None:
          self.send_error(404, "Not Found")
          return
        if mode == "503 once":
          server.mode[self.path] = None
          self.send_error(503, "Service Unavailable")
          return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":
          self.wfile.write(body[: len(body) // 2])
          self.wfile.flush()
          self.connection.shutdown(socket.SHUT_RDWR)
          return
        step = 1 << 14 if mode == "slow" else len(body)
        for i in range(0, len(body), step):
          self.wfile.write(body[i : i + step])
          if mode == "slow":
            time.sleep(0.02)

    class Quiet(http.server.ThreadingHTTPServer):
      def handle_error(self, request, client_address):  # a client killed mid-transfer is the point
        pass

    self.httpd = Quiet(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def serve(self, path: str, body: bytes, mode=None) -> RemoteFile:
    self.files[path], self.mode[path] = body, mode
    return RemoteFile(os.path.basename(path), self.url + path, hashlib.md5(body).hexdigest())

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


def _quiet(**kw):
  return dict(log=lambda m: None, progress=False, backoff=0.01, **kw)


def test_a_download_is_checked_and_lands_atomically(server, tmp_path):
  body = os.urandom(300_000)
  file = server.serve("/a.bin", body)
  path = download.download(file, str(tmp_path), **_quiet())
  assert open(path, "rb").read() == body and os.listdir(tmp_path) == ["a.bin"]
  download.download(file, str(tmp_path), **_quiet())  # already there and checked: no second request
  assert server.requests == ["/a.bin"]
  with open(path, "r+b") as f:  # a corrupted copy is fetched again
    f.write(b"xx")
  download.download(file, str(tmp_path), **_quiet())
  assert open(path, "rb").read() == body and len(server.requests) == 2


@pytest.mark.parametrize(
  "mode,phrase,tries",
  [("truncate", "truncated after 3 tries", 3), ("404", "HTTP 404", 1), ("checksum", "does not match its published", 1)],
)
def test_failed_downloads_leave_nothing_and_say_why_in_one_line(server, tmp_path, mode, phrase, tries):
  file = server.serve("/f.bin", os.urandom(100_000), "truncate" if mode == "truncate" else None)
  if mode == "404":
    file = RemoteFile("f.bin", server.url + "/missing.bin", file.md5)
  if mode == "checksum":
    file = RemoteFile("f.bin", file.url, "0" * 32)
  with pytest.raises(DataError, match=phrase) as e:
    download.download(file, str(tmp_path), retries=2, **_quiet())
  assert "\n" not in str(e.value) and "--data_dir" in str(e.value)
  assert os.listdir(tmp_path) == [] and len(server.requests) == tries


def test_a_transient_error_is_retried(server, tmp_path):
  file = server.serve("/t.bin", b"payload" * 1000, "503 once")
  assert open(download.download(file, str(tmp_path), **_quiet()), "rb").read() == b"payload" * 1000
  assert server.requests == ["/t.bin", "/t.bin"]


def test_no_server_is_one_line_after_the_retries(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  file = RemoteFile("x.bin", f"http://127.0.0.1:{port}/x.bin", "0" * 32)
  with pytest.raises(DataError, match="failed after 2 tries .*check the network") as e:
    download.download(file, str(tmp_path), retries=1, timeout=5, **_quiet())
  assert "\n" not in str(e.value) and os.listdir(tmp_path) == []


def test_a_download_killed_midway_leaves_no_file_and_a_rerun_finishes(server, tmp_path):
  body = os.urandom(2_000_000)
  file = server.serve("/big.bin", body, "slow")
  proc = subprocess.Popen(fresh_process_checks.command("download", "big.bin", file.url, file.md5, tmp_path), cwd=ROOT)
  part = tmp_path / "big.bin.part"
  deadline = time.time() + 60
  while not (part.exists() and part.stat().st_size > 100_000) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert part.exists() and not (tmp_path / "big.bin").exists()
  server.mode["/big.bin"] = None
  path = download.download(file, str(tmp_path), **_quiet())
  assert open(path, "rb").read() == body and os.listdir(tmp_path) == ["big.bin"]


def _gz_idx(tmp_path, name, array) -> bytes:
  raw = tmp_path / name
  write_idx(str(raw), array)
  return gzip.compress(raw.read_bytes())


def test_datasets_download_on_first_use_and_are_found_in_the_cache_after(server, tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  arrays = dict(
    train_images=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
    train_labels=rng.integers(0, 10, 30, dtype=np.uint8),
    test_images=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
    test_labels=rng.integers(0, 10, 10, dtype=np.uint8),
  )
  remote = []
  for (key, array), stem in zip(
    arrays.items(), ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
  ):
    remote.append(server.serve(f"/mnist/{stem}-ubyte.gz", _gz_idx(tmp_path, key, array)))
  monkeypatch.setitem(download.REMOTE, "mnist", tuple(remote))
  monkeypatch.setattr(datasets, "TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
  cache = str(tmp_path / "cache")
  with pytest.raises(DataError, match="allow the download"):
    data.load_arrays("mnist", cache_dir=cache)  # library default: no download
  ds = data.load_dataset("mnist", download=True, cache_dir=cache, val_fraction=0.1)
  np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])
  assert len(server.requests) == 4
  server.close()  # from now on only the cache can answer
  again = data.load_arrays("mnist", cache_dir=cache)
  np.testing.assert_array_equal(again[0], arrays["train_images"])
  config = datasets.DataConfig(dataset="mnist", data_cache=cache, val_fraction=0.1)  # as the flags make it
  np.testing.assert_array_equal(config.load().test.labels, arrays["test_labels"])


def test_cifar10_downloads_its_tarball(server, tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  tar = tmp_path / "cifar-10-python.tar.gz"
  cifar.write_cifar_tar(
    str(tar),
    rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, 50),
    rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, 10),
  )
  file = server.serve("/cifar-10-python.tar.gz", tar.read_bytes())
  monkeypatch.setitem(download.REMOTE, "cifar10", (file,))
  monkeypatch.setitem(data.DEFAULT_LOCAL_DIRS, "cifar10", str(tmp_path / "none"))
  monkeypatch.setattr(datasets, "TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
  ds = data.load_dataset("cifar10", download=True, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
  assert ds.train.images.shape == (40, 32, 32, 3) and ds.test.images.shape == (10, 32, 32, 3)


def test_in_a_multi_process_run_only_process_0_downloads(server, tmp_path, monkeypatch):
  file = server.serve("/m.bin", b"m" * 5000)
  barriers = []
  monkeypatch.setattr(download.multihost_utils, "sync_global_devices", barriers.append)
  monkeypatch.setattr(download.jax, "process_count", lambda: 2)
  monkeypatch.setattr(download.jax, "process_index", lambda: 1)
  with pytest.raises(DataError, match="process 0 did not download m.bin"):
    download.fetch("m", str(tmp_path), files=(file,), **_quiet())
  assert server.requests == [] and len(barriers) == 1  # it waited, and fetched nothing itself
  monkeypatch.setattr(download.jax, "process_index", lambda: 0)
  directory = download.fetch("m", str(tmp_path), files=(file,), **_quiet())
  assert server.requests == ["/m.bin"] and len(barriers) == 2
  monkeypatch.setattr(download.jax, "process_index", lambda: 1)
  assert download.fetch("m", str(tmp_path), files=(file,), **_quiet()) == directory  # found after the barrier
