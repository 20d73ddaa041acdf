//! The Helm chart (helm/sonde), rendered by a real helm and checked: lint,
//! least privilege, mounts, RBAC, values and schema behaviour, and the
//! Kubernetes OpenAPI schemas (kubernetes-validate, strict). `cargo xtask
//! test` provides helm (SONDE_HELM) and kubernetes-validate.
use std::{path::PathBuf, process::Command};

use serde_yaml::Value;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/sonde")
}

fn helm() -> Command {
    let bin = std::env::var_os("SONDE_HELM").unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home)
            .join(".cache/sonde/k8s-tools/helm")
            .into()
    });
    Command::new(bin)
}

/// `helm template` with `--set` values: the documents, or helm's error.
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = helm();
    cmd.args(["template", "rel", "--namespace", "observability"])
        .arg(chart());
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd
        .output()
        .expect("helm (run through `cargo xtask test`, which installs it)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn lint_is_clean() {
    let out = helm()
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("[WARNING]") && !text.contains("[ERROR]") && !text.contains("[INFO]"),
        "{text}"
    );
}

#[test]
fn default_daemonset_is_least_privilege_on_every_node() {
    let docs = render(&[]).unwrap();
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "the agent must see every process and its own host pid"
    );
    assert_eq!(pod["hostNetwork"], Value::Null, "no host network needed");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"][0]["operator"], "Exists",
        "all nodes, tainted or not"
    );
    let c = &pod["containers"][0];
    assert!(
        env(c, "SONDE_RINGBUF_SIZE").is_none(),
        "the agent sizes its ring to the node's CPUs"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strs(&sc["capabilities"]["add"]),
        ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]
    );
    assert_eq!(sc["seccompProfile"]["type"], "Unconfined");
    // Mounts: host paths read-only, where the agent looks for them.
    for (name, path) in [
        ("tracefs", "/sys/kernel/tracing"),
        ("debugfs", "/sys/kernel/debug"),
        ("cgroup", "/sys/fs/cgroup"),
    ] {
        let m = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} mount"));
        assert_eq!(
            (m["mountPath"].as_str(), m["readOnly"].as_bool()),
            (Some(path), Some(true)),
            "{name}"
        );
        let v = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        assert_eq!(v["hostPath"]["path"], path);
    }
    // The node name from the downward API, into the resource attributes.
    let node = env(c, "SONDE_NODE_NAME").unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(
        env(c, "OTEL_RESOURCE_ATTRIBUTES").unwrap()["value"],
        "k8s.node.name=$(SONDE_NODE_NAME)"
    );
    assert!(
        env(c, "OTEL_EXPORTER_OTLP_ENDPOINT").is_none(),
        "no endpoint by default"
    );
    assert_eq!(
        strs(&c["args"]),
        ["run", "--config", "/etc/sonde/config.toml"]
    );
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    // The metrics Service selects the DaemonSet's pods; no ServiceMonitor by default.
    let svc = find(&docs, "Service");
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["selector"]["matchLabels"]
    );
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
}

#[test]
fn rbac_reads_pods_and_replicasets_only() {
    let docs = render(&[]).unwrap();
    let role = find(&docs, "ClusterRole");
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            (
                strs(&r["apiGroups"]),
                strs(&r["resources"]),
                strs(&r["verbs"]),
            )
        })
        .collect();
    let read = vec!["get".to_string(), "list".into(), "watch".into()];
    assert_eq!(
        rules,
        vec![
            (vec!["".into()], vec!["pods".into()], read.clone()),
            (vec!["apps".into()], vec!["replicasets".into()], read)
        ]
    );
    let binding = find(&docs, "ClusterRoleBinding");
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], "observability");
    let ds = find(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );

    let docs = render(&[
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
    ])
    .unwrap();
    assert!(!docs
        .iter()
        .any(|d| ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
            .contains(&d["kind"].as_str().unwrap_or(""))));
    assert_eq!(
        find(&docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"],
        "existing"
    );
}

#[test]
fn values_reach_the_agent() {
    let docs = render(&[
        "otlp.endpoint=http://collector.obs:4318",
        "otlp.protocol=http/protobuf",
        "otlp.headers.x-api-key=secret",
        "sampler.name=parentbased_traceidratio",
        "sampler.arg=0.25",
        "capture.size=512",
        "capture.ringbufSize=16777216",
        "exclude.processes={envoy,pause}",
        "exclude.namespaces={kube-system}",
        "resourceAttributes.k8s\\.cluster\\.name=prod-eu",
        "prometheus.port=9900",
        "prometheus.serviceMonitor.enabled=true",
        "tolerations=null",
    ])
    .unwrap();
    let ds = find(&docs, "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let value = |n: &str| {
        env(c, n).unwrap_or_else(|| panic!("env {n}"))["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "http://collector.obs:4318"
    );
    assert_eq!(value("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf");
    assert_eq!(value("OTEL_EXPORTER_OTLP_HEADERS"), "x-api-key=secret");
    assert_eq!(value("SONDE_CAPTURE_SIZE"), "512");
    assert_eq!(value("SONDE_RINGBUF_SIZE"), "16777216");
    assert_eq!(
        value("OTEL_RESOURCE_ATTRIBUTES"),
        "k8s.cluster.name=prod-eu,k8s.node.name=$(SONDE_NODE_NAME)"
    );
    assert_eq!(c["ports"][0]["containerPort"], 9900);
    assert_eq!(ds["spec"]["template"]["spec"]["tolerations"], Value::Null);
    let sm = find(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    // The config file the agent reads (`deny_unknown_fields` there: these are its keys).
    let config: toml::Table = find(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["prometheus_listen"].as_str(), Some("0.0.0.0:9900"));
    // The view for `sonde top --connect`: the pod's localhost only.
    assert_eq!(config["view_listen"].as_str(), Some("127.0.0.1:9465"));
    assert_eq!(config["sampler"].as_str(), Some("parentbased_traceidratio"));
    assert_eq!(config["sampler_arg"].as_str(), Some("0.25"));
    let list = |k: &str| {
        config[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("exclude_processes"), ["envoy", "pause"]);
    assert_eq!(list("exclude_namespaces"), ["kube-system"]);
    assert_eq!(list("relay_processes"), ["docker-proxy"]);
    // A changed config rolls the pods.
    let before = render(&[]).unwrap();
    assert_ne!(
        find(&before, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"],
        ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    );

    let secret = render(&["otlp.headersSecret=otlp-auth", "otlp.headers.a=b"]).unwrap();
    let c = &find(&secret, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(c, "OTEL_EXPORTER_OTLP_HEADERS").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "otlp-auth",
        "the Secret wins"
    );
}

#[test]
fn context_propagation_is_opt_in_and_adds_net_admin_only_when_on() {
    let config_of = |docs: &[Value]| -> toml::Table {
        find(docs, "ConfigMap")["data"]["config.toml"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let caps = |docs: &[Value]| {
        strs(
            &find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
                ["securityContext"]["capabilities"]["add"],
        )
    };
    let off = render(&[]).unwrap();
    assert_eq!(
        config_of(&off)["context_propagation"].as_str(),
        Some("none")
    );
    assert!(!caps(&off).contains(&"NET_ADMIN".to_string()));
    let on = render(&[
        "contextPropagation.mode=traceparent",
        "contextPropagation.omitUnsampled=true",
        "contextPropagation.excludeProcesses={envoy}",
    ])
    .unwrap();
    let config = config_of(&on);
    assert_eq!(config["context_propagation"].as_str(), Some("traceparent"));
    assert_eq!(
        config["context_propagation_omit_unsampled"].as_bool(),
        Some(true)
    );
    assert_eq!(
        config["context_propagation_exclude"].as_array().unwrap()[0].as_str(),
        Some("envoy")
    );
    assert_eq!(
        caps(&on),
        [
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "NET_ADMIN"
        ]
    );
    let err = render(&["contextPropagation.mode=b3"]).unwrap_err();
    assert!(err.contains("contextPropagation"), "{err}");
}

#[test]
fn the_view_endpoint_can_be_turned_off() {
    let docs = render(&["view.enabled=false"]).unwrap();
    let config: toml::Table = find(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["view_listen"].as_str(), Some("off"));
}

#[test]
fn privileged_is_an_explicit_escape_hatch() {
    let docs = render(&["privileged=true"]).unwrap();
    let sc =
        &find(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], true);
    assert_eq!(sc["capabilities"], Value::Null);
}

#[test]
fn the_schema_rejects_bad_values() {
    for (set, why) in [
        ("capture.size=9000", "/capture/size"),
        ("capture.ringbufSize=1024", "/capture/ringbufSize"),
        ("otlp.protocol=udp", "/otlp/protocol"),
        ("otlp.endpoint=collector:4317", "/otlp/endpoint"),
        ("sampler.name=sometimes", "/sampler/name"),
        ("prometheus.port=0", "/prometheus/port"),
        ("hostPaths.tracefs=relative/path", "/hostPaths/tracefs"),
        ("capabilities={sys_admin}", "/capabilities/0"),
        ("unknownKey=1", "unknownKey"),
    ] {
        let err = render(&[set]).expect_err(set);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
        assert!(err.contains(why), "{set}: the error names {why}: {err}");
    }
}

/// Strict validation against the Kubernetes OpenAPI schemas.
fn validate(manifests: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("sonde-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("m{}.yaml", manifests.len()));
    std::fs::write(&path, manifests).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate (PyPI; `cargo xtask test` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

#[test]
fn rendered_manifests_match_the_kubernetes_schemas() {
    for sets in [
        vec![],
        vec![
            "privileged=true",
            "otlp.headersSecret=s",
            "otlp.endpoint=https://x:4317",
        ],
    ] {
        let docs = render(&sets).unwrap();
        let text: String = docs
            .iter()
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect();
        let (ok, out) = validate(&text);
        assert!(ok, "{sets:?}: {out}");
        for kind in [
            "daemonset",
            "clusterrole",
            "clusterrolebinding",
            "serviceaccount",
            "configmap",
            "service",
        ] {
            assert!(
                out.contains(&format!("passed for resource {kind}/")),
                "{kind} validated: {out}"
            );
        }
    }
    // The validator does reject what Kubernetes would: a misspelt field.
    let docs = render(&[]).unwrap();
    let text = serde_yaml::to_string(find(&docs, "DaemonSet"))
        .unwrap()
        .replace("hostPID: true", "hostPid: true");
    let (ok, out) = validate(&text);
    assert!(!ok, "a misspelt field must fail: {out}");
}
