#!/usr/bin/env bash
# Build the four images for real with podman, from the repository root (make images; the
# tests run it too). Installs podman when run as root and missing; uses the registry's
# python:3.11-slim when it can be pulled, else makes that base locally from the Debian
# mirror with mmdebstrap (Debian 12's python3 is 3.11). Prints each image's build time
# and size.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${SLUICE_IMAGE_TAG:-0.1.0}"
BASE=docker.io/library/python:3.11-slim
PACKAGES=(podman buildah runc fuse-overlayfs uidmap slirp4netns netavark aardvark-dns catatonit
  golang-github-containers-common mmdebstrap iptables)

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "images: needs podman and mmdebstrap: apt-get install ${PACKAGES[*]}" >&2
    exit 2
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi
if [ "$(id -u)" = 0 ] && [ ! -f /etc/containers/containers.conf ]; then
  # runc (crun refuses hybrid cgroups) and explicit limits (root may lack CAP_SYS_RESOURCE).
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
fi

if ! podman image exists "$BASE"; then
  if ! timeout 60 podman pull -q "$BASE" >/dev/null 2>&1; then
    echo "images: $BASE cannot be pulled: making it from the Debian mirror (about a minute)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    hooks=(--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*')
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then  # a TLS proxy's CA
      hooks+=(--customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates >/dev/null')
    fi
    mmdebstrap --quiet --variant=minbase \
      --include=python3,python3-venv,python-is-python3,ca-certificates \
      --aptopt='APT::Install-Recommends "false"' "${hooks[@]}" bookworm "$tmp/base.tar"
    podman import -q --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' "$tmp/base.tar" "$BASE" >/dev/null
  fi
fi

# The builds run side by side (each waits mostly on the package index and on writing its
# layers); each one's output is kept and shown if it fails.
logs=$(mktemp -d)
trap 'rm -rf "$logs" "${tmp:-}"' EXIT
build() {
  local name=$1 file=$2 start
  start=$(date +%s)
  if podman build -q --network host -f "$file" -t "localhost/sluice/$name:$TAG" . >"$logs/$name" 2>&1; then
    echo $(( $(date +%s) - start )) >"$logs/$name.seconds"
  else
    echo "images: building sluice/$name failed:" >&2
    tail -40 "$logs/$name" >&2
    return 1
  fi
}
pids=()
for spec in store:services/store/Dockerfile gateway:services/gateway/Dockerfile \
  sidecar:sidecar/Dockerfile orders-app:examples/orders-app/Dockerfile; do
  build "${spec%%:*}" "${spec#*:}" &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || exit 1
printf '%-22s %8s %10s\n' image seconds MB
for name in store gateway sidecar orders-app; do
  size=$(podman image inspect "localhost/sluice/$name:$TAG" --format '{{.Size}}')
  printf '%-22s %8s %10s\n' "sluice/$name" "$(cat "$logs/$name.seconds")" "$(( size / 1000000 ))"
done
