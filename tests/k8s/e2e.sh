#!/usr/bin/env bash
# End-to-end check of flexai's DRA driver on a REAL cluster. NOT run by CI, and never run on
# the development machines (no Kubernetes control plane there); docs/kubernetes.md says so.
#
# Needs: kubectl pointing at a cluster with Kubernetes 1.34+ (resource.k8s.io/v1) and
# consumable capacity (DRAConsumableCapacity: default from 1.36, a feature gate on the API
# server, scheduler and kubelet before), nodes labelled flexai.io/node=true running flexaid
# (a simulated card is enough) with flexai installed in /opt/flexai, containerd >= 1.7 or
# CRI-O with CDI enabled, and the image named in runtime-config/kubernetes/daemonset.yaml
# (FLEXAI_DRA_IMAGE overrides it) loadable by the nodes (kind: `kind load docker-image`).
#
#   tests/k8s/e2e.sh            # applies the manifests, checks, deletes the examples
#   KEEP=1 tests/k8s/e2e.sh     # leaves the examples running
#   ADMISSION=1 tests/k8s/e2e.sh  # also deploys the admission webhook (a self-signed
#                                 # certificate made here; FLEXAI_ADMISSION_IMAGE names its image)
#
# Exit 0: the pods got their slices; 1: a check failed; 2: no kubectl or no cluster (one line).
set -uo pipefail

# only builtins before this check: it must answer even with an empty PATH
if ! command -v kubectl >/dev/null 2>&1; then
  echo "e2e.sh: kubectl is not installed (or not on PATH); this script needs a real cluster, it is not run by CI" >&2
  exit 2
fi
if ! kubectl get --raw /readyz >/dev/null 2>&1; then
  echo "e2e.sh: no cluster answers kubectl (kubectl get --raw /readyz failed); point KUBECONFIG at a 1.34+ cluster" >&2
  exit 2
fi
if ! kubectl api-versions 2>/dev/null | grep -qx 'resource.k8s.io/v1'; then
  echo "e2e.sh: the cluster does not serve resource.k8s.io/v1 (DRA GA, Kubernetes 1.34+)" >&2
  exit 2
fi

set -e
here=$(cd "$(dirname "$0")/../.." && pwd)
manifests=$here/runtime-config/kubernetes
timeout=${TIMEOUT:-180s}
fail() { echo "e2e.sh: FAIL: $*" >&2; exit 1; }
step() { echo "==> $*"; }

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    kubectl delete --ignore-not-found --wait=false -f "$manifests/examples/" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "driver: namespace, RBAC, admission policy, DeviceClasses, DaemonSet"
kubectl apply -f "$manifests/rbac.yaml" -f "$manifests/admission-policy.yaml" -f "$manifests/deviceclasses.yaml"
if [ -n "${FLEXAI_DRA_IMAGE:-}" ]; then
  sed "s|image: flexai-dra:dev|image: $FLEXAI_DRA_IMAGE|" "$manifests/daemonset.yaml" | kubectl apply -f -
else
  kubectl apply -f "$manifests/daemonset.yaml"
fi
kubectl -n flexai-system rollout status daemonset/flexai-dra --timeout="$timeout" || fail "the DaemonSet did not become ready"

step "each flexai node publishes its ResourceSlice"
nodes=$(kubectl get nodes -l flexai.io/node=true -o jsonpath='{.items[*].metadata.name}')
[ -n "$nodes" ] || fail "no node is labelled flexai.io/node=true"
for node in $nodes; do
  for _ in $(seq 60); do
    n=$(kubectl get resourceslices --field-selector "spec.driver=gpu.flexai.io,spec.nodeName=$node" -o name | wc -l)
    [ "$n" -ge 1 ] && break
    sleep 2
  done
  [ "$n" -ge 1 ] || fail "node $node has no ResourceSlice of gpu.flexai.io"
done

step "a pod with a ResourceClaimTemplate (8Gi, 30 %) gets its slice"
kubectl apply -f "$manifests/examples/claim-template.yaml"
kubectl wait --for=condition=Ready pod/serve --timeout="$timeout" || fail "pod serve is not Ready: $(kubectl describe pod serve | tail -5)"
conf=$(kubectl exec serve -- cat /run/flexai/slice.conf)
grep -qx "memory_limit=$((8 << 30))" <<<"$conf" || fail "pod serve's slice is not 8 GiB: $conf"
grep -qx "compute_limit=30" <<<"$conf" || fail "pod serve's slice is not 30 %: $conf"

step "two pods share one claim (one slice)"
kubectl apply -f "$manifests/examples/shared-claim.yaml"
kubectl wait --for=condition=Ready pod/shared-a pod/shared-b --timeout="$timeout" || fail "the shared-claim pods are not Ready"
a=$(kubectl exec shared-a -- cat /run/flexai/slice.conf)
b=$(kubectl exec shared-b -- cat /run/flexai/slice.conf)
[ "$a" = "$b" ] || fail "the two pods of one claim see different slices:\n$a\n---\n$b"
grep -qx "memory_limit=$((4 << 30))" <<<"$a" || fail "the shared slice is not 4 GiB: $a"

if [ "${ADMISSION:-0}" = 1 ]; then
  step "admission webhook: a claim naming only memory gets the same share of compute"
  tls=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=flexai-admission.flexai-system.svc \
    -addext "subjectAltName=DNS:flexai-admission.flexai-system.svc" \
    -keyout "$tls/tls.key" -out "$tls/tls.crt" 2>/dev/null || fail "openssl could not make a certificate"
  kubectl -n flexai-system create secret tls flexai-admission-tls --cert="$tls/tls.crt" --key="$tls/tls.key" \
    --dry-run=client -o yaml | kubectl apply -f -
  sed "s|image: flexai-admission:dev|image: ${FLEXAI_ADMISSION_IMAGE:-flexai-admission:dev}|" \
    "$manifests/admission-webhook.yaml" | kubectl apply -f -
  kubectl patch mutatingwebhookconfiguration flexai-admission --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$(base64 -w0 "$tls/tls.crt")\"}]"
  rm -rf "$tls"
  kubectl -n flexai-system rollout status deployment/flexai-admission --timeout="$timeout" \
    || fail "the admission webhook did not become ready"
  kubectl apply -f "$manifests/examples/memory-only-claim.yaml"
  kubectl wait --for=condition=Ready pod/memory-only --timeout="$timeout" || fail "pod memory-only is not Ready"
  conf=$(kubectl exec memory-only -- cat /run/flexai/slice.conf)
  card=$(sed -n 's/^card_memory=//p' <<<"$conf")
  want=$(( (4 * 1024 * 1024 * 1024 * 100 + card - 1) / card ))
  grep -qx "memory_limit=$((4 << 30))" <<<"$conf" || fail "pod memory-only's slice is not 4 GiB: $conf"
  grep -qx "compute_limit=$want" <<<"$conf" || fail "pod memory-only's compute is not the card's share ($want %): $conf"
fi

step "PASS"
