// Validates deploy/*.yaml: every document against the Kubernetes schemas (kubernetes-models), then
// netsteer's own policy for the DaemonSet (capabilities, host namespaces, update strategy, probes,
// volumes, installer). Usage: node validate.mjs FILE.yaml... ; exits 1 on the first problem.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const npmDir = process.env.NETSTEER_NPM_DIR || "/var/cache/netsteer/npm";
const require = createRequire(path.join(npmDir, "node_modules", "x.js"));
const YAML = require("yaml");
const models = {
  "v1/Namespace": require("kubernetes-models/v1").Namespace,
  "v1/ServiceAccount": require("kubernetes-models/v1").ServiceAccount,
  "v1/ConfigMap": require("kubernetes-models/v1").ConfigMap,
  "apps/v1/DaemonSet": require("kubernetes-models/apps/v1").DaemonSet,
  "rbac.authorization.k8s.io/v1/ClusterRole": require("kubernetes-models/rbac.authorization.k8s.io/v1").ClusterRole,
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
    require("kubernetes-models/rbac.authorization.k8s.io/v1").ClusterRoleBinding,
};
// The agent's documented capability set (deploy/README.md explains each).
const AGENT_CAPS = ["BPF", "NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW", "SYS_ADMIN", "SYS_RESOURCE"];

function fail(file, doc, msg) {
  console.error(`FAIL ${file}: ${doc}: ${msg}`);
  process.exit(1);
}

function checkAgentDaemonSet(file, ds) {
  const name = `DaemonSet/${ds.metadata.name}`;
  const spec = ds.spec.template.spec;
  const must = (cond, msg) => cond || fail(file, name, msg);
  must(spec.hostNetwork === true, "hostNetwork must be true");
  must(!spec.hostPID && !spec.hostIPC, "hostPID/hostIPC must not be set");
  const agent = spec.containers.find((c) => c.name === "netsteerd");
  must(agent, "no netsteerd container");
  // Two agents on a node only as a hand-over: maxSurge 1 needs --takeover (hitless), otherwise
  // maxSurge 0 / maxUnavailable 1 (one agent at a time, capture stays pinned in between).
  const ru = ds.spec.updateStrategy?.rollingUpdate ?? {};
  const argv = [...(agent.command ?? []), ...(agent.args ?? [])];
  const takeover = argv.includes("--takeover");
  must(ds.spec.updateStrategy?.type === "RollingUpdate" &&
       ((takeover && ru.maxSurge === 1 && ru.maxUnavailable === 0) || (ru.maxSurge === 0 && ru.maxUnavailable === 1)),
       "updateStrategy must be RollingUpdate with maxSurge 1/maxUnavailable 0 and netsteerd --takeover, " +
       "or maxSurge 0/maxUnavailable 1");
  const sc = agent.securityContext ?? {};
  must(!sc.privileged, "netsteerd must not be privileged");
  must(sc.allowPrivilegeEscalation === false, "allowPrivilegeEscalation must be false");
  must(JSON.stringify(sc.capabilities?.drop) === '["ALL"]', "capabilities must drop ALL");
  const add = [...(sc.capabilities?.add ?? [])].sort();
  must(JSON.stringify(add) === JSON.stringify(AGENT_CAPS),
       `capabilities.add must be exactly ${AGENT_CAPS.join(",")} (got ${add.join(",")})`);
  must(agent.readinessProbe, "netsteerd needs a readiness probe");
  // The API token (for excludePodLabels) goes to netsteerd only, never to the installer.
  must(spec.automountServiceAccountToken === false, "automountServiceAccountToken must be false");
  const tokenVolumes = new Set((spec.volumes ?? []).filter((v) => (v.projected?.sources ?? [])
    .some((s) => s.serviceAccountToken)).map((v) => v.name));
  must(agent.args?.includes("--kube-api=in-cluster") || agent.command?.includes("--kube-api=in-cluster")
       ? (agent.volumeMounts ?? []).some((m) => tokenVolumes.has(m.name)) : true,
       "--kube-api=in-cluster needs the projected token volume mounted in netsteerd");
  for (const c of spec.initContainers ?? [])
    must(!(c.volumeMounts ?? []).some((m) => tokenVolumes.has(m.name)), `init container ${c.name} must not get the token`);
  const volumes = new Set((spec.volumes ?? []).map((v) => v.name));
  for (const c of [...spec.containers, ...(spec.initContainers ?? [])])
    for (const m of c.volumeMounts ?? [])
      must(volumes.has(m.name), `container ${c.name} mounts undefined volume ${m.name}`);
  const mounts = Object.fromEntries((agent.volumeMounts ?? []).map((m) => [m.mountPath, m]));
  for (const p of ["/sys/fs/bpf", "/var/run/netsteer", "/var/lib/netsteer", "/var/run/netns"])
    must(mounts[p], `netsteerd must mount ${p}`);
  const installer = (spec.initContainers ?? []).find((c) => (c.command ?? []).join(" ").startsWith("netsteer-cni install"));
  must(installer, "an init container must run `netsteer-cni install`");
  const imounts = (installer.volumeMounts ?? []).map((m) => m.mountPath);
  must(imounts.includes("/host/opt/cni/bin") && imounts.includes("/host/etc/cni/net.d"),
       "the installer must mount the CNI bin and conf dirs");
}

let count = 0;
for (const file of process.argv.slice(2)) {
  if (path.basename(file) === "kustomization.yaml") continue;
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
  for (const d of docs) {
    if (d.errors.length) fail(file, "YAML", d.errors[0].message);
    const obj = d.toJS();
    if (obj === null) continue;
    const key = `${obj.apiVersion}/${obj.kind}`;
    const Model = models[key];
    if (!Model) fail(file, key, "unexpected kind (add it to validate.mjs)");
    try {
      new Model(obj).validate();
    } catch (e) {
      fail(file, `${key} ${obj.metadata?.name}`, e.message);
    }
    if (key === "v1/ConfigMap" && obj.data?.["netconf.json"]) {
      try {
        const nc = JSON.parse(obj.data["netconf.json"]);
        if (nc.type !== "netsteer-cni") fail(file, "ConfigMap", "netconf.json type must be netsteer-cni");
      } catch (e) {
        fail(file, "ConfigMap", `netconf.json is not JSON: ${e.message}`);
      }
    }
    if (key === "apps/v1/DaemonSet" && obj.metadata.name === "netsteer") checkAgentDaemonSet(file, obj);
    if (key === "rbac.authorization.k8s.io/v1/ClusterRole") {
      // Least privilege: read single pods, nothing else (no list/watch, no secrets, no writes).
      const rules = JSON.stringify(obj.rules);
      if (rules !== JSON.stringify([{ apiGroups: [""], resources: ["pods"], verbs: ["get"] }]))
        fail(file, `ClusterRole ${obj.metadata.name}`, `rules must be exactly get on pods, got ${rules}`);
    }
    console.log(`ok ${path.basename(file)} ${key} ${obj.metadata?.name}`);
    count++;
  }
}
if (count === 0) fail("-", "-", "no documents validated");
