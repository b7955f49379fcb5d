#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
# from the k8s.io/kubernetes Go module with the ordinary go client.
#
# k8s.io/kubernetes requires its staging modules at v0.0.0 (resolved through
# replace directives to its own tree), so a wrapper module requires the
# release and replaces every staging module with the published v0.Y.Z tag.
#
# usage: build-k8s.sh vX.Y.Z DEST_DIR
set -euo pipefail
version=${1:?usage: build-k8s.sh vX.Y.Z DEST_DIR}
dest=${2:?usage: build-k8s.sh vX.Y.Z DEST_DIR}
command -v go >/dev/null || { echo "error: 'go' not found; install Go >= 1.25 (https://go.dev/dl or 'apt-get install golang')" >&2; exit 2; }

minor=${version#v1.}
staging_version="v0.${minor}"
work=$(mktemp -d "${TMPDIR:-/tmp}/kvpilot-k8s-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "==> resolving k8s.io/kubernetes@${version}"
modfile=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[ -f "$modfile" ] || { echo "error: could not download k8s.io/kubernetes@${version} from the Go module proxy" >&2; exit 2; }

{
  echo "module kvpilot.local/k8sbuild"
  echo
  echo "go 1.25"
  echo
  echo "require k8s.io/kubernetes ${version}"
  echo
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"${staging_version}"'#p' "$modfile"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package k8sbuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
echo "==> resolving dependencies (go mod tidy)"
GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod go get "k8s.io/kubernetes@${version}" >/dev/null

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor%%.*}"
  ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
done
mkdir -p "$dest.tmp"
echo "==> go build kube-apiserver kube-controller-manager kube-scheduler kubectl (${version}); the first build takes 10-30 minutes"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$dest.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "==> built into $dest"
