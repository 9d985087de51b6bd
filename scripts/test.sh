#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
#
#   scripts/test.sh [pytest arguments]
#
# 1. Debian packages the suite drives as real processes (the registry for image preheat, nginx for the Go
#    supernode's download port, ...), installed with apt-get when missing and we are root. Not root: one
#    line says which are missing, and the tests that need them skip naming the package.
# 2. Python packages from requirements-test.lock (exact versions with hashes), into the active virtualenv,
#    or into ./.venv, made here when none is active, so the machine's own site-packages never leak in.
# 3. pytest. Its exit status is the script's; "no tests collected" (5) is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# One package a line: the tests that use each one skip when it is absent.
debian_packages=(
  buildah           # tests/image: builds the image from the Dockerfile (and brings runc, which runs its containers)
  debootstrap       # tests/image: the stand-in for the Dockerfile's python base image, from Debian packages
  docker-registry   # tests/preheat: a real Docker registry (distribution 2.8)
  nginx             # tests/interop: the Go supernode's download port, as upstream deploys it
  etcd-server       # tests/k8s: the store of the real kube-apiserver (../shared/k8s/bin)
  containerd        # tests/mirror: the container runtime that pulls through the registry mirror (CRI PullImage)
  skopeo            # tests/mirror: copies a test image between registries as a user would
)
# tests/k8s drive kubectl: Debian's kubernetes-client, unless the machine already has a kubectl.
command -v kubectl >/dev/null || debian_packages+=(kubernetes-client)

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test.sh: not root (or no apt-get): cannot install ${missing[*]}; the tests that need them will skip" >&2
  fi
fi

if [[ -z ${VIRTUAL_ENV:-} ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  python=.venv/bin/python
else
  python=python
fi
"$python" -m pip install -q --require-hashes -r requirements-test.lock
# The project itself, editable and without resolving anything: every dependency came from the lock.
"$python" -m pip install -q --no-deps --no-build-isolation -e .

set +e
"$python" -m pytest -q "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "test.sh: no tests were collected" >&2
  exit 1
fi
exit "$status"
