#!/usr/bin/env bash
# Build the Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler) from Debian 12's
# source package, once per machine, into a cache outside the repository keyed by version. etcd and kubectl come
# from Debian's packages. Prints the bin directory on its last line. Nothing is built when the cache is complete.
set -euo pipefail

VERSION="${RUNBOOKS_K8S_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
# The vendored modern-go/reflect2 1.0.1 crashes the API server (SIGSEGV in UnsafeMapType.UnsafeIterate) when it is
# built with Go >= 1.18, as soon as a custom resource is stored; Debian's reflect2 1.0.2 replaces it before the build.
PATCHES="reflect2-1.0.2"
CACHE="${RUNBOOKS_CACHE:-$HOME/.cache/runbooks}/kubernetes/${VERSION}+${PATCHES}"
BIN="$CACHE/bin"
WANT=(kube-apiserver kube-controller-manager kube-scheduler)

complete() { for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }

# one build at a time per machine: two concurrent builds (two clones' ./dev test) removed each other's source tree
mkdir -p "$(dirname "$CACHE")"
exec 9>"$CACHE.lock"
flock 9

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubectl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if complete && [ ${#need_apt[@]} -eq 0 ]; then echo "$BIN"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
if ! complete; then
  need_apt+=(golang-1.19-go rsync dpkg-dev make golang-github-modern-go-reflect2-dev)
  if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
    cat > /etc/apt/sources.list.d/runbooks-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
fi
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2

if ! complete; then
  SRC="$CACHE/src"
  rm -rf "$SRC" && mkdir -p "$SRC"
  (cd "$SRC" && apt-get source -qq --download-only "kubernetes=$VERSION" >&2 && dpkg-source -x --no-check ./*.dsc tree >&2)
  vendored="$SRC/tree/vendor/github.com/modern-go/reflect2"
  rm -rf "$vendored" && mkdir -p "$vendored"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2/. "$vendored/"
  rm -rf "$vendored"/*_test.go "$vendored/go.mod" "$vendored/go.sum" "$vendored/test" "$vendored/tests" "$vendored/debian"
  export PATH="/usr/lib/go-1.19/bin:$PATH" GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0 GOCACHE="$CACHE/gocache"
  (cd "$SRC/tree" && nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >&2)
  mkdir -p "$BIN"
  for b in "${WANT[@]}"; do cp "$SRC/tree/_output/local/bin/linux/amd64/$b" "$BIN/$b" 2>/dev/null \
    || cp "$(find "$SRC/tree/_output" -type f -name "$b" | head -n1)" "$BIN/$b"; done
  rm -rf "$SRC" "$CACHE/gocache"
fi
complete
echo "$BIN"
