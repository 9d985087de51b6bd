#!/usr/bin/env bash
# Build the container image without a Docker engine: buildah builds the Dockerfile unchanged.
#
#   scripts/build-image.sh [-t TAG] [--debian-base] [--cache-dir DIR] [--mirror URL]
#
#   -t TAG          the image to write (default: localhost/dragonfly-supernode-py:<version in pyproject.toml>)
#   --debian-base   do not pull the Dockerfile's python base image: build a stand-in for it from Debian packages
#                   (debootstrap: the same Debian release and Python minor version), for machines that reach a
#                   Debian mirror and the Python package index but no container registry. The stand-in is built
#                   once and kept (as a rootfs tarball under the cache directory and as a buildah image), keyed
#                   by a hash of its recipe, so later builds only rebuild the Dockerfile's own steps.
#   --cache-dir DIR where the stand-in's rootfs is kept (default: ${XDG_CACHE_HOME:-~/.cache}/dragonfly-image)
#   --mirror URL    the Debian mirror for debootstrap (default: the one apt already uses, from /etc/apt)
#
# Needs buildah (Debian: `apt-get install buildah`; plus debootstrap for --debian-base) and root, or a
# rootless buildah set up for your user (--debian-base always needs root). The last line printed is the image
# name; then load it where it runs, e.g. `buildah push TAG docker-archive:/tmp/img.tar` and
# `kind load image-archive /tmp/img.tar`, or push it to your registry.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build-image.sh: $*" >&2; exit 2; }

tag=""
debian_base=0
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/dragonfly-image"
mirror=""
while (($#)); do
  case $1 in
    -t|--tag) (($# >= 2)) || die "$1 needs a value"; tag=$2; shift 2 ;;
    --debian-base) debian_base=1; shift ;;
    --cache-dir) (($# >= 2)) || die "$1 needs a value"; cache_dir=$2; shift 2 ;;
    --mirror) (($# >= 2)) || die "$1 needs a value"; mirror=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

command -v buildah >/dev/null || die "buildah is not installed (Debian/Ubuntu: apt-get install buildah)"
if [[ -z $tag ]]; then
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
  tag="localhost/dragonfly-supernode-py:${version:?no version in pyproject.toml}"
fi
# chroot isolation needs no OCI runtime or network setup; it is what works in a container or VM without one.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

# The Dockerfile's default base, e.g. python:3.11.13-slim-bookworm: the stand-in takes its Debian release
# and Python minor version from it, so the two cannot drift apart.
base_default=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile | head -n1)
[[ $base_default =~ python:([0-9]+\.[0-9]+)\.[0-9]+-slim-([a-z]+) ]] \
  || die "cannot read the Python version and Debian release from ARG PYTHON_IMAGE=$base_default"
python_minor=${BASH_REMATCH[1]}
suite=${BASH_REMATCH[2]}

# The Debian mirror apt uses: the first deb source (deb822 .sources or one-line .list) serving $suite.
apt_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (deb && uris && has_suite) { print uris; exit } deb = uris = has_suite = 0; next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uris = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
      END { if (deb && uris && has_suite) print uris }' "$file" | head -n1
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $file ]] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -e 's/\[[^]]*\]//' "$file" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }'
  done
}

# The stand-in base: Debian's python$python_minor on a minimal $suite, shaped like the official image where the
# Dockerfile relies on it (`python` and `pip` on PATH, pip allowed to install into the system Python).
make_debian_base() {
  local recipe key image tarball rootfs container mount
  command -v debootstrap >/dev/null || die "--debian-base needs debootstrap (apt-get install debootstrap)"
  [[ $(id -u) -eq 0 ]] || die "--debian-base needs root (debootstrap)"
  # The recipe is everything below that decides the stand-in's content; its hash names the cached copy.
  recipe="suite=$suite python=$python_minor include=python$python_minor,python$python_minor-venv,python3-pip,"
  recipe+="python-is-python3,ca-certificates trim=EXTERNALLY-MANAGED,apt-lists,docs,man,locale v1"
  key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
  image="localhost/dragonfly-debian-python-base:$key"
  if buildah inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image"
    return
  fi
  mkdir -p "$cache_dir"
  tarball="$cache_dir/debian-python-base-$key.tar"
  if [[ ! -s $tarball ]]; then
    [[ -n $mirror ]] || mirror=$(apt_mirror | head -n1)
    [[ -n $mirror ]] || die "no Debian mirror for $suite in /etc/apt (give one with --mirror URL)"
    rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
    # Removed even when debootstrap fails half-way, so that no partial root file system is ever reused.
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-image.sh: debootstrap $suite from $mirror (a minute or two)" >&2
    debootstrap --variant=minbase \
      --include="python$python_minor,python$python_minor-venv,python3-pip,python-is-python3,ca-certificates" \
      "$suite" "$rootfs" "$mirror" >&2
    # The official image's Python is not "externally managed": the Dockerfile's plain `pip install` needs that.
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
  fi
  container=$(buildah from scratch)
  mount=$(buildah mount "$container")
  tar -C "$mount" -xf "$tarball"
  buildah umount "$container" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 "$container"
  buildah commit --quiet --rm "$container" "$image" >/dev/null
  echo "$image"
}

build_args=()
if ((debian_base)); then
  base=$(make_debian_base)
  build_args+=(--build-arg "PYTHON_IMAGE=$base")
fi
# pip in the RUN steps reaches the package index with this machine's CA bundle (it may hold a proxy's CA);
# the bind mount exists only while a step runs, so the image keeps the base's own bundle.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca_bundle ]] && build_args+=(-v "$ca_bundle:$ca_bundle:ro")

start=$SECONDS
# --format docker: the OCI image format has no HEALTHCHECK and would drop the Dockerfile's.
# --layers: the locked dependencies are a cached layer, rebuilt only when requirements.lock changes.
buildah bud --format docker --layers "${build_args[@]}" -t "$tag" . >&2
size=$(buildah images --format "{{.Size}}" "$tag" 2>/dev/null | head -n1 || true)
echo "build-image.sh: built $tag in $((SECONDS - start)) s${size:+, $size}" >&2
echo "$tag"
