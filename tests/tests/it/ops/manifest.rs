//! deploy/: the Kubernetes manifest parses as the Kubernetes API's own types (k8s-openapi,
//! generated from the API's OpenAPI schema; a field the schema does not know is reported by
//! its path) and is the privileged per-node agent the docs describe; every flag and VIKING_*
//! variable the manifests, the compose file, the docker run recipe and the systemd unit give
//! the agent is one `viking agent` takes; the Grafana dashboard queries only metrics the
//! agent exports. No cluster is needed.
#![allow(clippy::unwrap_used)]
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
};
use serde_json::Value;
use viking_tests::viking_bin;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(r) => serde_json::json!(r.parse::<f64>().unwrap()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), to_json(v)))
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML {other:?}"),
    }
}

/// Paths present in `given` but not in `typed` (dropped by the typed round trip: unknown to
/// the schema) or with another value.
fn differences(given: &Value, typed: &Value, at: &str, out: &mut Vec<String>) {
    match (given, typed) {
        (Value::Object(g), Value::Object(t)) => {
            for (k, v) in g {
                match t.get(k) {
                    Some(tv) => differences(v, tv, &format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k} is not a field of the Kubernetes schema")),
                }
            }
        }
        (Value::Array(g), Value::Array(t)) if g.len() == t.len() => {
            for (i, (gv, tv)) in g.iter().zip(t).enumerate() {
                differences(gv, tv, &format!("{at}[{i}]"), out);
            }
        }
        (g, t) if g != t => out.push(format!("{at}: {g} reads back as {t}")),
        _ => {}
    }
}

/// Parses `doc` as the Kubernetes type `T` and checks nothing in it was unknown.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let mut diff = Vec::new();
    differences(doc, &serde_json::to_value(&typed).unwrap(), "", &mut diff);
    assert!(diff.is_empty(), "{} {}:\n{}", doc["kind"], doc["metadata"]["name"], diff.join("\n"));
    typed
}

/// Every `--flag` and `VIKING_*` variable `viking agent --help` lists.
fn agent_help() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(viking_bin()).args(["agent", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for word in
        help.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == ',' || c == '=')
    {
        if let Some(f) = word.strip_prefix("--") {
            flags.insert(f.split(['=', '<', ' ']).next().unwrap().to_owned());
        }
        if word.starts_with("VIKING_") {
            envs.insert(word.to_owned());
        }
    }
    (flags, envs)
}

fn check_flags(what: &str, args: &[String], flags: &BTreeSet<String>) {
    for a in args {
        if let Some(f) = a.strip_prefix("--") {
            let f = f.split('=').next().unwrap();
            assert!(flags.contains(f), "{what}: `viking agent` has no flag --{f} ({flags:?})");
        }
    }
}

#[test]
fn daemonset_is_valid_kubernetes_and_the_privileged_agent() {
    let text = read("kubernetes/viking-agent.yaml");
    let docs: Vec<Value> = YamlLoader::load_from_str(&text).unwrap().iter().map(to_json).collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "DaemonSet"]);
    let _: Namespace = strict(&docs[0]);
    let _: ServiceAccount = strict(&docs[1]);
    let ds: DaemonSet = strict(&docs[2]);

    let spec = ds.spec.as_ref().unwrap();
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let ru = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(
        ru.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
        "one host at a time"
    );
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pods");
    }
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("viking/agent:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));

    // Mounts: where each lands, and which host path (or Secret) is behind it.
    let volumes = pod.volumes.as_ref().unwrap();
    let source = |name: &str| {
        volumes.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("volume {name}"))
    };
    let mounts = c.volume_mounts.as_ref().unwrap();
    let mount = |path: &str| {
        mounts.iter().find(|m| m.mount_path == path).unwrap_or_else(|| panic!("mount {path}"))
    };
    let bpffs = mount("/sys/fs/bpf");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));
    for (path, host) in [
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/var/run/docker.sock", "/var/run/docker.sock"),
        ("/var/lib/viking", "/var/lib/viking"),
    ] {
        let v = source(&mount(path).name);
        assert_eq!(v.host_path.as_ref().map(|h| h.path.as_str()), Some(host), "{path}");
    }
    assert_eq!(
        source(&mount("/var/run/docker.sock").name).host_path.as_ref().unwrap().type_.as_deref(),
        Some("Socket")
    );
    for secret_dir in ["/etc/viking/etcd", "/etc/viking/api"] {
        let v = source(&mount(secret_dir).name);
        assert!(v.secret.is_some(), "{secret_dir} comes from a Secret");
    }
    let env = c.env.as_ref().unwrap();
    let store = env.iter().find(|e| e.name == "VIKING_STORE").unwrap();
    assert!(
        store.value_from.as_ref().unwrap().secret_key_ref.is_some(),
        "store endpoints from a Secret"
    );

    // Probes: alive and ready, over the API's TLS.
    let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    let ready = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(live.path.as_deref(), Some("/v1/health"));
    assert_eq!(ready.path.as_deref(), Some("/v1/ready"));
    assert_eq!(ready.scheme.as_deref(), Some("HTTPS"));

    // What the agent is told, it understands.
    let (flags, envs) = agent_help();
    let args = c.args.as_ref().unwrap();
    assert_eq!(args[0], "agent");
    check_flags("the DaemonSet", args, &flags);
    for f in ["api-cert", "api-key", "api-ca", "etcd-ca"] {
        assert!(args.iter().any(|a| a.starts_with(&format!("--{f}="))), "--{f}");
    }
    for e in env.iter().filter(|e| e.name.starts_with("VIKING_")) {
        assert!(envs.contains(&e.name), "`viking agent` reads no {} ({envs:?})", e.name);
    }
}

#[test]
fn docker_recipes_and_systemd_unit_give_the_agent_what_it_takes() {
    let (flags, envs) = agent_help();
    let compose = &YamlLoader::load_from_str(&read("docker/docker-compose.yml")).unwrap()[0];
    let svc = to_json(&compose["services"]["viking-agent"]);
    assert_eq!(svc["image"], format!("viking/agent:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        (&svc["privileged"], &svc["network_mode"], &svc["pid"]),
        (&Value::from(true), &Value::from("host"), &Value::from("host"))
    );
    let vols = svc["volumes"].to_string();
    for v in ["/sys/fs/cgroup", "/var/run/docker.sock", "/var/lib/viking", "rshared"] {
        assert!(vols.contains(v), "compose volumes: {v}");
    }
    let command: Vec<String> = serde_json::from_value(svc["command"].clone()).unwrap();
    check_flags("docker-compose.yml", &command, &flags);
    for e in svc["environment"].as_object().unwrap().keys().filter(|k| k.starts_with("VIKING_")) {
        assert!(envs.contains(e), "compose: no {e}");
    }

    let run = read("docker/docker-run.sh");
    // What tests/it/ops/container.rs runs the image with.
    for f in [
        "--privileged",
        "--network host",
        "--pid host",
        "--cgroupns host",
        "bind-propagation=rshared",
        "/var/run/docker.sock",
        "/var/lib/viking",
    ] {
        assert!(run.contains(f), "docker-run.sh: {f}");
    }
    // Every other `--flag` in the script is the agent's.
    let docker_flags = [
        "--",
        "--name",
        "--restart",
        "--privileged",
        "--network",
        "--pid",
        "--cgroupns",
        "--mount",
    ];
    let agent_args: Vec<String> = run
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_owned())
        .filter(|w| w.starts_with("--") && !docker_flags.contains(&w.as_str()))
        .collect();
    assert!(agent_args.len() >= 8, "{agent_args:?}");
    check_flags("docker-run.sh", &agent_args, &flags);

    let unit = read("systemd/viking-agent.service");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    assert!(exec.starts_with("/usr/local/bin/viking agent"), "{exec}");
    for line in ["Restart=always", "KillSignal=SIGTERM", "LimitMEMLOCK=infinity"] {
        assert!(unit.lines().any(|l| l == line), "viking-agent.service: {line}");
    }
    for l in read("systemd/agent.env").lines() {
        let l = l.trim_start_matches("# ");
        if let Some((name, _)) =
            l.split_once('=').filter(|(n, _)| n.starts_with("VIKING_") && *n != "VIKING_AGENT_ARGS")
        {
            assert!(envs.contains(name), "agent.env: `viking agent` reads no {name}");
        }
    }
}

#[test]
fn grafana_dashboard_queries_only_metrics_the_agent_exports() {
    let dash: Value = serde_json::from_str(&read("grafana/viking-dashboard.json")).unwrap();
    // Every family the agent registers, and the ones read from the maps at scrape time.
    let m = viking::metrics::Metrics::new();
    m.store.observe("get", std::time::Instant::now(), &Ok(()));
    let text = m.encode().unwrap();
    let mut families: BTreeSet<String> =
        viking::metrics::DATAPATH_FAMILIES.iter().map(|s| s.to_string()).collect();
    let mut histograms = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned());
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
        }
    }
    let mut used = 0;
    for p in dash["panels"].as_array().unwrap() {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("viking_") {
                    continue;
                }
                used += 1;
                let known = families.contains(word)
                    || ["_bucket", "_sum", "_count"].iter().any(|s| {
                        word.strip_suffix(s).is_some_and(|base| histograms.contains(base))
                    });
                assert!(
                    known,
                    "panel {:?} queries {word}, which the agent does not export",
                    p["title"]
                );
            }
        }
    }
    assert!(used >= 15, "the dashboard covers the metrics ({used} uses)");
}
