#!/usr/bin/env bash
# Build kwok and helm from their Go modules into DEST_DIR.
# usage: build-tools.sh kwok|helm VERSION DEST_DIR
set -euo pipefail
tool=${1:?usage: build-tools.sh kwok|helm VERSION DEST_DIR}
version=${2:?version}
dest=${3:?dest}
command -v go >/dev/null || { echo "error: 'go' not found; install Go >= 1.24" >&2; exit 2; }
mkdir -p "$dest.tmp"
case "$tool" in
  kwok)
    echo "==> go install sigs.k8s.io/kwok/cmd/kwok@${version}"
    GOBIN="$dest.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${version}"
    ;;
  helm)
    # Stamp the version and the Kubernetes version helm assumes for
    # `helm template`/`lint` (an unstamped build reports v1.20).
    kube_minor=${KUBE_MINOR:-35}
    ld="-s -w -X helm.sh/helm/v3/internal/version.version=${version} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ld+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${kube_minor}"
    done
    echo "==> go install helm.sh/helm/v3/cmd/helm@${version}"
    GOBIN="$dest.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@${version}"
    ;;
  *) echo "unknown tool $tool" >&2; exit 2 ;;
esac
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "==> built $tool ${version} into $dest"
