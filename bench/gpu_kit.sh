#!/usr/bin/env bash
# Run here (with network) before a GPU session: what the GPU machine (no network, 64 MiB carried)
# lacks goes into two folders of the tree that .git/info/exclude ignores and `device run` carries:
#   .whl/       wheels: snntorch, and the optional peers (spikingjelly + loguru, norse built as a
#               pure-Python wheel from its sdist); never torch or anything CUDA
#   .gpu-data/  mnist.npz from ../shared/data (11 MB), for the first MNIST training run
# Then: device run with carry [".whl", ".gpu-data"] and command
#   "BSS2_GIT_COMMIT=<commit> bash bench/gpu_session.sh" (timeout_s ~ DEADLINE + 60).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .gpu-data
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
grep -qx "/.gpu-data/" .git/info/exclude 2>/dev/null || echo "/.gpu-data/" >> .git/info/exclude
python -m pip download -q --no-deps -d .whl "snntorch==1.0.0" "spikingjelly==2.0.0" loguru
python -m pip download -q --no-deps --no-binary=:all: -d /tmp/bss2-sdist "norse==1.1.0"
python -m pip wheel -q --no-deps --no-build-isolation -w .whl /tmp/bss2-sdist/norse-1.1.0.tar.gz
if [ -f ../shared/data/mnist/mnist.npz ]; then
    cp ../shared/data/mnist/mnist.npz .gpu-data/
else
    echo "no ../shared/data/mnist/mnist.npz: the MNIST run is skipped on the GPU"
fi
du -sh .whl .gpu-data
