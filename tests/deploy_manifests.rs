//! The deploy manifests agree with the code: every `tutti_*` metric that the Grafana dashboard and
//! the Prometheus alert rules query is one the code exports (`tutti_shared::metrics::names::ALL`),
//! and every queue that a KEDA ScaledObject scales on is one the code declares
//! (`tutti_shared::queue::Topology`). No servers needed. YAML is read by a small text scan (the
//! files are ours and simple); scripts/check-deploy does the full schema validation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tutti_shared::metrics::names;
use tutti_shared::queue::Topology;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `tutti_*` identifiers in a PromQL expression, with histogram suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("tutti_") {
        let start = i + pos;
        let mut end = start + "tutti_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if (start == 0 || !ident(bytes[start - 1])) && end > start + "tutti_".len() {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

/// Every `expr` string anywhere in a JSON document.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

/// The values of `key:` in a YAML text: inline scalars, and `|` / `>` block scalars (the lines
/// indented deeper than the key).
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let prefix = format!("{key}:");
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(rest) = trimmed.strip_prefix(&prefix) {
            let indent = line.len() - line.trim_start().len();
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let li = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && li <= indent {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                out.push(block.join("\n"));
                continue;
            }
            let v = rest.split(" #").next().unwrap_or("").trim();
            out.push(v.trim_matches('"').trim_matches('\'').to_string());
        }
        i += 1;
    }
    out
}

fn assert_exported(source: &str, exprs: &[String]) -> BTreeSet<String> {
    assert!(!exprs.is_empty(), "{source}: no expressions found");
    let known: BTreeSet<&str> = names::ALL.iter().copied().collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{source} queries metrics the code does not export: {unknown:?} (known: {known:?})"
    );
    used
}

#[test]
fn metric_name_scanner_strips_suffixes_and_ignores_other_words() {
    let got = metric_names(
        r#"histogram_quantile(0.9, rate(tutti_stage_duration_seconds_bucket[5m])) / my_tutti_x + tutti_ready{a="tutti_b"} tutti_*"#,
    );
    let want: BTreeSet<String> = ["tutti_stage_duration_seconds", "tutti_ready", "tutti_b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let text = read("grafana/tutti.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    json_exprs(&dash, &mut exprs);
    let used = assert_exported("deploy/grafana/tutti.json", &exprs);
    for must in [
        names::BACKLOG,
        names::JOBS_FINISHED,
        names::STAGE_DURATION,
        names::STEPS,
        names::WORKER_TASKS,
        names::READY,
        names::DEAD_LETTERS,
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
}

#[test]
fn alert_rules_query_only_exported_metrics() {
    let text = read("prometheus/alerts.yaml");
    let exprs = yaml_values(&text, "expr");
    let alerts = yaml_values(&text, "alert");
    assert_eq!(
        exprs.len(),
        alerts.len(),
        "every alert rule has one expr: {alerts:?}"
    );
    let used = assert_exported("deploy/prometheus/alerts.yaml", &exprs);
    // backlog growing, job failure ratio, dead letters, workers missing
    for must in [
        names::BACKLOG,
        names::JOBS_FINISHED,
        names::DEAD_LETTERS,
        names::READY,
    ] {
        assert!(used.contains(must), "no alert rule uses {must}");
    }
}

/// (file, ScaledObject name, queueName) for every ScaledObject document under deploy/k8s.
fn scaled_objects() -> Vec<(PathBuf, String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![deploy().join("k8s")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("deploy/k8s") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("manifest");
        for doc in text.split("\n---") {
            if !doc.lines().any(|l| l.trim() == "kind: ScaledObject") {
                continue;
            }
            // metadata.name: the first `name:` indented one level under `metadata:`.
            let mut name = None;
            let mut in_meta = false;
            for l in doc.lines() {
                if l.starts_with("metadata:") {
                    in_meta = true;
                } else if let Some(n) = l.strip_prefix("  name:").filter(|_| in_meta) {
                    name = Some(n.trim().to_string());
                    break;
                } else if !l.starts_with(' ') && !l.trim().is_empty() {
                    in_meta = false;
                }
            }
            let name =
                name.unwrap_or_else(|| panic!("{}: ScaledObject without a name", f.display()));
            let queues = yaml_values(doc, "queueName");
            assert!(
                !queues.is_empty(),
                "{}: ScaledObject {name} has no queueName",
                f.display()
            );
            for q in queues {
                out.push((f.clone(), name.clone(), q));
            }
        }
    }
    out
}

#[test]
fn keda_scales_each_pool_on_the_queue_of_its_stage() {
    let topo = Topology::default();
    let denoise = topo.denoise_queue();
    let vocode = topo.vocode_queue();
    let objects = scaled_objects();
    assert!(!objects.is_empty(), "no ScaledObject under deploy/k8s");
    let mut covered = BTreeSet::new();
    for (file, name, queue) in &objects {
        assert!(
            queue == &denoise || queue == &vocode,
            "{}: ScaledObject {name} scales on {queue:?}, which is not a task queue the code declares ({denoise}, {vocode})",
            file.display()
        );
        let want = if name.contains("denoise") {
            &denoise
        } else if name.contains("vocode") {
            &vocode
        } else {
            panic!("{}: ScaledObject {name} names no pool", file.display())
        };
        assert_eq!(
            queue,
            want,
            "{}: ScaledObject {name} scales on another stage's queue",
            file.display()
        );
        covered.insert(queue.clone());
    }
    assert_eq!(
        covered,
        BTreeSet::from([denoise, vocode]),
        "one ScaledObject per worker pool"
    );
    // The queue prefix the pods run with is the one the queue names assume.
    let config = read("k8s/base/config.yaml");
    let prefixes = yaml_values(&config, "TUTTI_QUEUE_PREFIX");
    assert_eq!(
        prefixes.len(),
        1,
        "deploy/k8s/base/config.yaml sets TUTTI_QUEUE_PREFIX once"
    );
    assert_eq!(
        Topology::new(prefixes[0].clone()),
        topo,
        "deploy/k8s/base/config.yaml sets another TUTTI_QUEUE_PREFIX than the queues KEDA watches"
    );
}
