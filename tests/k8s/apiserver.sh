#!/usr/bin/env bash
# A real kube-apiserver (plus etcd) for the Kubernetes end-to-end tests, built from Debian.
#
#   tests/k8s/apiserver.sh build   build + cache kube-apiserver and etcd, print the bin dir
#   tests/k8s/apiserver.sh path    print the cached kube-apiserver path (exit 1 if not built)
#   tests/k8s/apiserver.sh start DIR   run etcd + kube-apiserver from DIR for poking at by hand
#                                      (prints `export KUBECONFIG=…`); tests use tests/src/k8s.rs
#   tests/k8s/apiserver.sh stop DIR    stop them (the apiserver first, then etcd)
#
# No package registry ships a kube-apiserver, but Debian bookworm ships the Kubernetes 1.20
# sources (`kubernetes`, 1.20.5+really1.20.2, with vendor/) and the Go 1.19 toolchain that
# builds them. Only the first run on a machine pays for the build (~7 min on 2 idle cores,
# ~2 GB of build tree, removed afterwards); the binary is cached outside the checkout in
# $MQTT_PROXY_CI_CACHE/kube-apiserver-<debian source version>/ and linked from
# $MQTT_PROXY_CI_CACHE/bin/ together with etcd, where tests/src/k8s.rs looks for them.
#
# Nothing here changes the system's apt configuration: sources, lists and the download cache
# live in a private apt directory under the cache. Debian packages are unpacked with
# `dpkg -x` into the cache instead of installed, except rsync (needed by the Kubernetes
# build), which is apt-installed when missing and we are root.
set -euo pipefail

CACHE="${MQTT_PROXY_CI_CACHE:-/var/cache/mqtt-proxy-ci}"
BIN="$CACHE/bin"
SUITE=bookworm
# The upstream release we build; the Debian revision (…-1.1+deb12u1) is whatever the mirror
# carries and becomes part of the cache key, so a Debian security update rebuilds.
UPSTREAM="1.20.5+really1.20.2"

log() { echo "tests/k8s/apiserver.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# The mirror this machine already uses (deb822 or one-line sources), else Debian's CDN.
mirror() {
  if [ -n "${MQTT_PROXY_DEBIAN_MIRROR:-}" ]; then echo "$MQTT_PROXY_DEBIAN_MIRROR"; return; fi
  local m
  m="$(grep -hsE '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | head -1 | awk '{print $2}')"
  [ -n "$m" ] || m="$(grep -hsE '^deb [^ ]*/debian/? ' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 | awk '{print $2}')"
  echo "${m:-http://deb.debian.org/debian}"
}

cached_apiserver() {
  local f
  for f in "$CACHE"/kube-apiserver-"$UPSTREAM"*/kube-apiserver; do
    [ -x "$f" ] && "$f" --version >/dev/null 2>&1 && { echo "$f"; return 0; }
  done
  return 1
}

cached_etcd() {
  local f
  for f in "$CACHE"/etcd-*/etcd; do
    [ -x "$f" ] && "$f" --version >/dev/null 2>&1 && { echo "$f"; return 0; }
  done
  return 1
}

link_bins() {
  mkdir -p "$BIN"
  ln -sfn "$1" "$BIN/kube-apiserver"
  ln -sfn "$2" "$BIN/etcd"
}

# --- private apt --------------------------------------------------------------------------
APT="$CACHE/apt"
apt_opts() {
  echo "-o Dir::Etc::sourcelist=$APT/sources.list -o Dir::Etc::sourceparts=-" \
    "-o Dir::State::Lists=$APT/lists -o Dir::Cache=$APT/cache" \
    "-o Dir::Cache::archives=$APT/cache/archives"
}
apt_setup() {
  local m keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  m="$(mirror)"
  [ -f "$keyring" ] || die "$keyring is missing (apt-get install debian-archive-keyring)"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
  cat >"$APT/sources.list" <<SRC
deb [signed-by=$keyring] $m $SUITE main
deb-src [signed-by=$keyring] $m $SUITE main
SRC
  log "apt update (private lists in $APT, mirror $m)"
  # shellcheck disable=SC2046
  apt-get $(apt_opts) update -qq
}
# Downloads the named binary packages and unpacks them into $1.
apt_unpack() {
  local dest="$1"; shift
  local dl="$APT/debs"
  rm -rf "$dl" && mkdir -p "$dl" "$dest"
  # shellcheck disable=SC2046
  (cd "$dl" && apt-get $(apt_opts) download -qq "$@" 2>&1 | grep -v unsandboxed >&2 || true)
  local d
  for p in "$@"; do
    d="$(ls "$dl"/"${p}"_*.deb 2>/dev/null | head -1)"
    [ -n "$d" ] || die "apt-get download $p failed"
    dpkg -x "$d" "$dest"
  done
  rm -rf "$dl"
}

# --- build ----------------------------------------------------------------------------------
# need CMD PKG: apt-installs PKG when CMD is missing (as root), else says how.
need() {
  command -v "$1" >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "needs $1: sudo apt-get install -y $2"
  log "installing $2"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$2" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2" >/dev/null; } \
    || die "apt-get install $2 failed"
}

build() {
  local apiserver etcd
  if apiserver="$(cached_apiserver)" && etcd="$(cached_etcd)"; then
    link_bins "$apiserver" "$etcd"
    echo "$BIN"
    return 0
  fi
  command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu) to fetch the sources"
  # Build tools a minimal Debian image may lack (dpkg-dev brings make and patch).
  need dpkg-source dpkg-dev
  need make make
  need patch patch
  need rsync rsync
  need gpgv gpgv
  mkdir -p "$CACHE"
  apt_setup

  local tools="$CACHE/debian-tools"
  if [ ! -x "$tools/usr/lib/go-1.19/bin/go" ] || [ ! -x "$tools/usr/bin/etcd" ] \
    || [ ! -d "$tools/usr/share/gocode/src/github.com/json-iterator/go" ]; then
    log "unpacking Go 1.19, etcd and the reflect2/json-iterator sources into $tools"
    rm -rf "$tools"
    apt_unpack "$tools" golang-1.19-go golang-1.19-src etcd-server \
      golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
  fi

  if ! etcd="$(cached_etcd)"; then
    local ev
    ev="$("$tools/usr/bin/etcd" --version | awk '/etcd Version/ {print $3}')"
    mkdir -p "$CACHE/etcd-$ev"
    install -m 0755 "$tools/usr/bin/etcd" "$CACHE/etcd-$ev/etcd"
    etcd="$CACHE/etcd-$ev/etcd"
  fi

  if ! apiserver="$(cached_apiserver)"; then
    apiserver="$(build_apiserver "$tools")"
  fi
  link_bins "$apiserver" "$etcd"
  echo "$BIN"
}

build_apiserver() {
  local tools="$1" version work src out started
  # shellcheck disable=SC2046
  version="$(apt-cache $(apt_opts) showsrc kubernetes | awk '/^Version:/ {print $2}' \
    | grep -F "$UPSTREAM" | sort -V | tail -1)"
  [ -n "$version" ] || die "the mirror has no kubernetes source $UPSTREAM for $SUITE"
  out="$CACHE/kube-apiserver-$version"
  work="$CACHE/build"
  started="$(date +%s)"
  log "building kube-apiserver from Debian source kubernetes $version in $work"
  rm -rf "$work" && mkdir -p "$work"
  # shellcheck disable=SC2046
  (cd "$work" && apt-get $(apt_opts) source --download-only -qq "kubernetes=$version" 2>&1 \
    | grep -v unsandboxed >&2 || true)
  ls "$work"/kubernetes_*.dsc >/dev/null 2>&1 || die "apt-get source kubernetes=$version failed"
  # dpkg-source applies debian/patches (3.0 quilt) and checks the checksums from the .dsc.
  # Its "cannot verify inline signature" warning is expected (the uploader's key is in
  # debian-keyring, not installed): apt already checked the .dsc and tarballs against the
  # Sources index of the signed Release file.
  (cd "$work" && dpkg-source -x --no-copy kubernetes_*.dsc src >/dev/null)
  src="$work/src"

  # The vendored reflect2 1.0.1 / json-iterator 1.1.10 read Go runtime internals that moved in
  # Go 1.18 and SIGSEGV on the first custom resource; Debian's 1.0.2 / 1.1.12 are fixed and
  # API-compatible. Swap the sources only (vendor/modules.txt keeps matching go.mod).
  vendor_swap "$tools/usr/share/gocode/src/github.com/modern-go/reflect2" \
    "$src/vendor/github.com/modern-go/reflect2"
  vendor_swap "$tools/usr/share/gocode/src/github.com/json-iterator/go" \
    "$src/vendor/github.com/json-iterator/go"

  mkdir -p "$src/.go/src/k8s.io" "$work/home"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  (
    cd "$src"
    export GOROOT="$tools/usr/lib/go-1.19"
    export PATH="$GOROOT/bin:$PATH"
    export GOPATH="$src/.go" GOCACHE="$work/gocache" HOME="$work/home"
    export GOFLAGS=-mod=vendor CGO_ENABLED=0 GOPROXY=off GOTOOLCHAIN=local
    make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1
  ) || { tail -40 "$work/build.log" >&2; die "make failed; full log in $work/build.log"; }

  local built="$src/_output/bin/kube-apiserver"
  [ -x "$built" ] || built="$src/_output/local/bin/linux/amd64/kube-apiserver"
  [ -x "$built" ] || die "make succeeded but produced no kube-apiserver"
  mkdir -p "$out"
  install -m 0755 "$built" "$out/.kube-apiserver.$$"
  mv -f "$out/.kube-apiserver.$$" "$out/kube-apiserver"
  {
    echo "debian source: kubernetes $version"
    echo "built: $(date -u +%FT%TZ) in $(($(date +%s) - started)) s on $(nproc) cores"
    echo "size: $(stat -c %s "$out/kube-apiserver") bytes"
    "$out/kube-apiserver" --version
  } >"$out/BUILD-INFO"
  log "$(tr '\n' ';' <"$out/BUILD-INFO")"
  [ -n "${MQTT_PROXY_KEEP_BUILD:-}" ] || rm -rf "$work"
  echo "$out/kube-apiserver"
}

vendor_swap() {
  local from="$1" to="$2"
  [ -d "$from" ] && [ -d "$to" ] || die "vendor swap: $from or $to missing"
  find "$to" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -delete
  find "$from" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "$to"/ \;
}

# --- manual start/stop (the Rust harness does the same for tests) ---------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() {
  local dir="$1" bin="$BIN"
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] || die "not built: run $0 build"
  mkdir -p "$dir" && dir="$(cd "$dir" && pwd)"
  local etcd_port peer_port port token
  etcd_port="$(free_port)" peer_port="$(free_port)" port="$(free_port)"
  token="admin-$RANDOM$RANDOM"
  (
    cd "$dir"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=test-ca -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile ext -out apiserver.crt 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    echo "$token,admin,admin,\"system:masters\"" >tokens.csv
  )
  "$bin/etcd" --name=test --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="test=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
    --insecure-port=0 --cert-dir="$dir/certs" \
    --tls-cert-file="$dir/apiserver.crt" --tls-private-key-file="$dir/apiserver.key" \
    --client-ca-file="$dir/ca.crt" --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC --service-account-key-file="$dir/sa.pub" \
    --service-account-signing-key-file="$dir/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.96.0.0/16 >"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:$port", certificate-authority: "$dir/ca.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
KC
  local i
  for i in $(seq 120); do
    [ "$("$bin/kubectl" --kubeconfig="$dir/kubeconfig" get --raw=/readyz 2>/dev/null)" = ok ] && {
      echo "export KUBECONFIG=$dir/kubeconfig"; return 0; }
    sleep 0.5
  done
  tail -20 "$dir/kube-apiserver.log" >&2
  stop "$dir"
  die "kube-apiserver not ready within 60 s"
}
stop() {
  local dir="$1" name pid i
  for name in kube-apiserver etcd; do
    [ -f "$dir/$name.pid" ] || continue
    pid="$(cat "$dir/$name.pid")"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$name.pid"
  done
}

case "${1:-}" in
  build)
    mkdir -p "$CACHE"
    # One build at a time per machine; a second caller waits and then finds the cache.
    exec 9>"$CACHE/.apiserver.lock"
    flock 9
    build
    ;;
  path) cached_apiserver ;;
  start) start "${2:?usage: $0 start DIR}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 build|path|start DIR|stop DIR" >&2; exit 2 ;;
esac
