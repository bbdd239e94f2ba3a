#!/usr/bin/env python3
"""Static checks of the deployment files that schemas cannot make (run by deploy/check.sh).

  check_manifests.py render CDN_BIN RENDER.yaml...   cross-references of rendered manifests
  check_manifests.py containerfile Containerfile     the image's rules
  check_manifests.py self-test CDN_BIN RENDER.yaml   each check fails on a broken copy

Rendered manifests (the output of `kubectl kustomize`):
- every Service's selector matches the pod labels of a workload in the same render, and its
  named target ports exist in those pods;
- every PodDisruptionBudget, NetworkPolicy and ServiceMonitor selects something;
- the HPA's target exists; volumes name ConfigMaps of the render (or the Secrets listed in
  EXTERNAL_SECRETS, which the operator or cert-manager creates);
- every SRV name an edge.toml or router.toml follows (peers_dns, edges_dns) in the render's
  namespace is a headless Service of the render governing the StatefulSet, with that named
  port (and, for peers, publishing not-ready pods);
- every ConfigMap key edge.toml / router.toml / origin.toml passes
  `cdn edge|router|origin --check-config` (written to a temporary file);
- custom resources (no schema in kubernetes-validate): ServiceMonitor, cert-manager Issuer and
  Certificate get the structural checks here instead.
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# Secrets the manifests use but do not contain: created by hand or by cert-manager
# (deploy/README.md).
EXTERNAL_SECRETS = {"edge-peer-tls", "edge-viewer-tls", "geoipupdate", "cdn-peer-ca"}
CONFIG_KEYS = {"edge.toml": "edge", "router.toml": "router", "origin.toml": "origin"}
# Kinds kubernetes-validate has no schema for, checked here instead.
CUSTOM_KINDS = {"ServiceMonitor", "Issuer", "Certificate"}


def load(paths):
    docs = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def name(d):
    return f"{d['kind']}/{d['metadata']['name']}"


def matches(selector, labels):
    """A label selector (matchLabels, matchExpressions, or a plain map) against labels."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        ml = selector.get("matchLabels") or {}
        exprs = selector.get("matchExpressions") or []
    else:
        ml, exprs = selector, []
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for e in exprs:
        v = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and v not in e["values"]:
            return False
        if op == "NotIn" and v in e["values"]:
            return False
        if op == "Exists" and v is None:
            return False
        if op == "DoesNotExist" and v is not None:
            return False
    return True


def pods(docs):
    """(workload, pod template labels, pod spec) of every workload."""
    out = []
    for d in docs:
        if d["kind"] in WORKLOADS:
            t = d["spec"]["template"]
            out.append((d, t["metadata"].get("labels") or {}, t["spec"]))
    return out


def container_ports(spec):
    ports = set()
    for c in spec.get("containers", []):
        for p in c.get("ports", []):
            ports.add(p.get("name"))
            ports.add(p.get("containerPort"))
    return ports


def check_render(cdn, docs, origin):
    errors = []

    def err(msg):
        errors.append(f"{origin}: {msg}")

    workloads = pods(docs)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    # Workloads' own selectors select their template.
    for w, labels, _ in workloads:
        if not matches(w["spec"]["selector"], labels):
            err(f"{name(w)}: spec.selector does not match its pod template's labels")

    for s in by_kind.get("Service", {}).values():
        sel = s["spec"].get("selector")
        if not sel:
            err(f"{name(s)}: no selector")
            continue
        hits = [(w, spec) for w, labels, spec in workloads if matches(sel, labels)]
        if not hits:
            err(f"{name(s)}: selector {sel} matches no pod of the render")
            continue
        for p in s["spec"].get("ports", []):
            target = p.get("targetPort", p.get("port"))
            for w, spec in hits:
                if target not in container_ports(spec):
                    err(f"{name(s)}: port {p.get('name')} targets {target!r}, "
                        f"which {name(w)} does not expose")
        for w, spec in hits:
            # A StatefulSet's governing Service must exist.
            if w["kind"] == "StatefulSet" and w["spec"]["serviceName"] not in by_kind["Service"]:
                err(f"{name(w)}: serviceName {w['spec']['serviceName']} is not a Service")

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind.get(kind, {}).values():
            sel = d["spec"]["selector"] if kind == "PodDisruptionBudget" else d["spec"]["podSelector"]
            hits = [spec for _, labels, spec in workloads if matches(sel, labels)]
            if not hits:
                err(f"{name(d)}: selector matches no pod of the render")
            if kind == "NetworkPolicy":
                for rule in d["spec"].get("ingress", []):
                    for p in rule.get("ports", []):
                        if not all(p["port"] in container_ports(spec) for spec in hits):
                            err(f"{name(d)}: port {p['port']!r} is not a port of its pods")

    for h in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = h["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            err(f"{name(h)}: scales {ref['kind']}/{ref['name']}, not in the render")
        if h["spec"]["minReplicas"] > h["spec"]["maxReplicas"]:
            err(f"{name(h)}: minReplicas > maxReplicas")

    configmaps = by_kind.get("ConfigMap", {})
    secrets = set(by_kind.get("Secret", {})) | EXTERNAL_SECRETS
    for w, _, spec in workloads:
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                err(f"{name(w)}: volume {v['name']} names ConfigMap {v['configMap']['name']}, "
                    "not in the render")
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                err(f"{name(w)}: volume {v['name']} names Secret {v['secret']['secretName']}, "
                    "neither in the render nor a known external one")

    # ServiceMonitor: selects a Service of the render, on a port it has.
    for m in by_kind.get("ServiceMonitor", {}).values():
        svcs = [s for s in by_kind.get("Service", {}).values()
                if matches(m["spec"]["selector"], s["metadata"].get("labels") or {})]
        if not svcs:
            err(f"{name(m)}: selects no Service of the render")
        for e in m["spec"].get("endpoints", []):
            if not any(e["port"] in [p.get("name") for p in s["spec"]["ports"]] for s in svcs):
                err(f"{name(m)}: endpoint port {e['port']!r} is not a named Service port")
    # cert-manager: the Certificate's Secret is what the edges mount, issued by an Issuer of
    # the render, to the stable names of the StatefulSet's pods.
    for c in by_kind.get("Certificate", {}).values():
        spec = c["spec"]
        if spec["issuerRef"]["name"] not in by_kind.get("Issuer", {}):
            err(f"{name(c)}: issuer {spec['issuerRef']['name']} not in the render")
        names = spec.get("dnsNames") or []
        if not names:
            err(f"{name(c)}: no dnsNames")
        for sts in by_kind.get("StatefulSet", {}).values():
            mounts = [v for v in sts["spec"]["template"]["spec"].get("volumes", [])
                      if v.get("secret", {}).get("secretName") == spec["secretName"]]
            if not mounts:
                continue
            ns = sts["metadata"].get("namespace", "default")
            hpa = next((h for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
                        if h["spec"]["scaleTargetRef"]["name"] == sts["metadata"]["name"]), None)
            most = hpa["spec"]["maxReplicas"] if hpa else sts["spec"]["replicas"]
            want = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{ns}.svc.cluster.local"
                    for i in range(most)]
            missing = [n for n in want if n not in names]
            if missing:
                err(f"{name(c)}: does not name {', '.join(missing)}")
        if not {"server auth", "client auth"} <= set(spec.get("usages", [])):
            err(f"{name(c)}: peers need both server auth and client auth")

    # DNS membership: every SRV name a config follows in this render's namespace
    # (`_PORT._PROTO.SVC.NS.svc.cluster.local`) is a headless Service of the render with a
    # port named PORT of protocol PROTO, over the StatefulSet it governs (so that its SRV
    # targets are the pods' stable names, which the peer certificates carry), publishing
    # not-ready pods (a joining edge must be found by its siblings).
    statefulsets = by_kind.get("StatefulSet", {})
    namespaces = {w["metadata"].get("namespace", "default") for w, _, _ in workloads}
    for cm in configmaps.values():
        for key, text in (cm.get("data") or {}).items():
            if key not in ("edge.toml", "router.toml"):
                continue
            try:
                conf = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                continue  # the node's own check below reports it
            for table in ("peers_dns", "edges_dns"):
                for i, entry in enumerate(conf.get(table, [])):
                    srv = entry.get("srv", "")
                    m = re.fullmatch(r"_([a-z0-9-]+)\._(tcp|udp)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local\.?", srv)
                    if not m or m.group(4) not in namespaces:
                        continue
                    port, proto, svc_name, _ = m.groups()
                    where = f"ConfigMap/{cm['metadata']['name']} {key} {table}[{i}] {srv}"
                    svc = by_kind.get("Service", {}).get(svc_name)
                    if svc is None:
                        err(f"{where}: no Service {svc_name} in the render")
                        continue
                    if svc["spec"].get("clusterIP") != "None":
                        err(f"{where}: Service {svc_name} is not headless (no SRV record per pod)")
                    if not any(p.get("name") == port and p.get("protocol", "TCP") == proto.upper()
                               for p in svc["spec"].get("ports", [])):
                        err(f"{where}: Service {svc_name} has no {proto.upper()} port named {port}")
                    if not any(st["spec"].get("serviceName") == svc_name for st in statefulsets.values()):
                        err(f"{where}: Service {svc_name} governs no StatefulSet (SRV targets "
                            "would not be the pods' stable names)")
                    if table == "peers_dns" and not svc["spec"].get("publishNotReadyAddresses"):
                        err(f"{where}: Service {svc_name} hides not-ready pods: a joining edge "
                            "would never be found by its siblings")

    # Every config file passes the node's own check.
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for cm in configmaps.values():
            for key, text in (cm.get("data") or {}).items():
                node = CONFIG_KEYS.get(key)
                if node is None:
                    continue
                path = os.path.join(tmp, f"{cm['metadata']['name']}-{key}")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                r = subprocess.run([cdn, node, "--check-config", path],
                                   capture_output=True, text=True, check=False)
                checked += 1
                if r.returncode != 0:
                    err(f"ConfigMap/{cm['metadata']['name']} key {key}: "
                        f"`cdn {node} --check-config` failed: {r.stderr.strip()}")
                else:
                    print(f"  {origin}: ConfigMap/{cm['metadata']['name']} {key}: "
                          f"{r.stdout.strip().split(': ', 1)[-1]}")
    if checked == 0 and workloads:
        err("workloads but no node config in any ConfigMap")
    return errors


def check_containerfile(path, root):
    errors = []
    lines = []
    with open(path, encoding="utf-8") as f:
        joined = ""
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            joined += line
            if joined.strip():
                lines.append(joined.strip())
            joined = ""
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
    froms = [a for i, a in instr if i == "FROM"]
    if len(froms) < 2:
        errors.append("not multi-stage: needs a builder FROM and a runtime FROM")
    stages = set()
    for a in froms:
        image = a.split()[0]
        m = re.match(r"^(?:.*/)?[^/:@]+(?::([^@]+))?(?:@sha256:[0-9a-f]{64})?$", image)
        tag = m.group(1) if m else None
        if "@sha256:" not in image and (tag is None or tag == "latest"):
            errors.append(f"FROM {image}: pin a tag (not latest, not none) or a digest")
        parts = a.split()
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    runs = " ".join(a for i, a in instr if i == "RUN")
    if "cargo build" not in runs or "--locked" not in runs:
        errors.append("the build must be `cargo build ... --locked` (the lock file, exactly)")
    if "--release" not in runs:
        errors.append("the build must be --release")
    # The last stage: what runs.
    last = max(i for i, (k, _) in enumerate(instr) if k == "FROM")
    final = instr[last:]
    users = [a for i, a in final if i == "USER"]
    if not users:
        errors.append("the runtime stage has no USER: it would run as root")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            errors.append(f"USER {users[-1]}: use a numeric non-root uid (runAsNonRoot checks it)")
    if not any(i == "ENTRYPOINT" and "cdn" in a for i, a in final):
        errors.append("the runtime stage needs an ENTRYPOINT of the cdn binary")
    if not any(i == "STOPSIGNAL" and a.strip() == "SIGTERM" for i, a in final):
        errors.append("STOPSIGNAL SIGTERM missing (the nodes drain on it)")
    if not any(i == "EXPOSE" for i, a in final):
        errors.append("no EXPOSE in the runtime stage")
    if any(i == "RUN" for i, a in final):
        errors.append("RUN in the runtime stage: it has no shell")
    for i, a in instr:
        if i not in ("COPY", "ADD"):
            continue
        if i == "ADD":
            errors.append(f"ADD {a}: use COPY")
        args = [x for x in a.split() if not x.startswith("--")]
        if "--from=" in a:
            src_stage = re.search(r"--from=(\S+)", a).group(1)
            if src_stage not in stages:
                errors.append(f"COPY {a}: no stage named {src_stage}")
            continue
        for src in args[:-1]:
            if not os.path.exists(os.path.join(root, src)):
                errors.append(f"COPY {src}: not in the repository")
    return errors


def mutate(docs, how):
    """A broken copy of a render, for the self-test."""
    import copy
    docs = copy.deepcopy(docs)
    for d in docs:
        if how == "selector" and d["kind"] == "Service" and d["metadata"]["name"] == "edge":
            d["spec"]["selector"] = {"app.kubernetes.io/name": "cdn-egde"}
            return docs
        if how == "toml" and d["kind"] == "ConfigMap" and "edge.toml" in d.get("data", {}):
            d["data"]["edge.toml"] = d["data"]["edge.toml"].replace(
                'chunk_size = "1MiB"', 'chunk_size = "1 lots"')
            return docs
        if how == "port" and d["kind"] == "Service" and d["metadata"]["name"] == "edge-peers":
            d["spec"]["ports"][0]["targetPort"] = "peers"
            return docs
        if how == "srv" and d["kind"] == "Service" and d["metadata"]["name"] == "edge-peers":
            d["spec"]["ports"] = [p for p in d["spec"]["ports"] if p["name"] != "peer"]
            return docs
        if how == "hpa" and d["kind"] == "HorizontalPodAutoscaler":
            d["spec"]["scaleTargetRef"]["name"] = "edges"
            return docs
    raise SystemExit(f"self-test: nothing to break for {how}")


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    mode = argv[1]
    if mode == "containerfile":
        path = argv[2]
        errors = check_containerfile(path, os.path.dirname(os.path.abspath(path)))
        for e in errors:
            print(f"{path}: {e}", file=sys.stderr)
        if not errors:
            print(f"  {path}: multi-stage, pinned, --locked, non-root numeric USER, COPY sources present")
        return 1 if errors else 0
    cdn = argv[2]
    if mode == "render":
        errors = []
        for p in argv[3:]:
            errors += check_render(cdn, load([p]), p)
        for e in errors:
            print(e, file=sys.stderr)
        return 1 if errors else 0
    if mode == "self-test":
        docs = load(argv[3:])
        failed = 0
        for how in ("selector", "toml", "port", "srv", "hpa"):
            errs = check_render(cdn, mutate(docs, how), f"broken-{how}")
            if errs:
                print(f"  self-test {how}: caught: {errs[0]}")
            else:
                print(f"self-test {how}: a broken render passed", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
