//! The alerting rules and the dashboard (`k8s/monitoring/`) against the
//! series the services really export (`tests/series/`, themselves checked
//! against the binaries by `tests/series.rs`): every metric name an
//! expression selects exists, and every label it matches on exists with the
//! values it names. A metric renamed or removed, or a label value changed,
//! fails here before an alert goes silent in production. (`promtool check
//! rules` and `promtool test rules` run in `.ci/run`.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A selector of an expression: the metric name and its matchers
/// `(label, op, value)`.
type Selector = (String, Vec<(String, String, String)>);

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Metric name → its series' label sets, from the committed lists.
fn exported() -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for list in ["memory", "full", "proxy"] {
        for line in repo(&format!("crates/tracking-api/tests/series/{list}.series")).lines() {
            let (name, labels) = line.split_once('{').unwrap_or((line, "}"));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            out.entry(name.to_owned()).or_default().push(labels);
        }
    }
    out
}

const KEYWORDS: [&str; 25] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    // Aggregations, also when their grouping comes first: `sum by (x) (…)`.
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The selectors of a PromQL expression: names (with or without `{…}`),
/// not functions, keywords, grouping lists, ranges, numbers or strings.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: u8| {
        while *i < b.len() && b[*i] != close {
            *i += 1;
        }
        *i += 1;
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            skip_to(&mut i, c);
        } else if c == b'[' {
            skip_to(&mut i, b']');
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let ident = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let next = b.get(j).copied();
            if GROUPING.contains(&ident) && next == Some(b'(') {
                i = j;
                skip_to(&mut i, b')');
            } else if next == Some(b'(') || KEYWORDS.contains(&ident) {
                // A function, or a keyword.
            } else if next == Some(b'{') {
                let close = expr[j..].find('}').unwrap() + j;
                out.push((ident.to_owned(), matchers(&expr[j + 1..close])));
                i = close + 1;
            } else {
                out.push((ident.to_owned(), Vec::new()));
            }
        } else if c == b'{' {
            panic!("a selector without a metric name in `{expr}`: name it");
        } else {
            i += 1;
        }
    }
    out
}

fn matchers(inside: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = inside.trim();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!']).unwrap();
        let label = rest[..op_at].trim().to_owned();
        let op_len = if rest[op_at..].starts_with("=~") || rest[op_at..].starts_with("!") {
            2
        } else {
            1
        };
        let op = rest[op_at..op_at + op_len].to_owned();
        let after = rest[op_at + op_len..].trim_start();
        let quote = after.as_bytes()[0];
        let end = after[1..].find(quote as char).unwrap() + 1;
        out.push((label, op, after[1..end].to_owned()));
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim();
    }
    out
}

/// The expressions of the rule file (`expr:` lines) and the names it records.
fn rule_exprs() -> (Vec<String>, BTreeSet<String>) {
    let text = repo("k8s/monitoring/rules.yaml");
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some(e) = line.strip_prefix("expr:") {
            let e = e.trim();
            assert!(
                !e.is_empty() && !e.starts_with(['|', '>']),
                "rules.yaml: keep each expr on its line: {line}"
            );
            exprs.push(e.to_owned());
        } else if let Some(r) = line.strip_prefix("- record:") {
            recorded.insert(r.trim().to_owned());
        }
    }
    (exprs, recorded)
}

fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&repo("k8s/monitoring/dashboard.json")).unwrap();
    let mut out = Vec::new();
    walk(&json, &mut out);
    out
}

/// What is wrong with one selector, if anything.
fn check(
    (name, matchers): &Selector,
    exported: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    recorded: &BTreeSet<String>,
) -> Option<String> {
    if recorded.contains(name) {
        return None;
    }
    if name == "vector" || name == "time" {
        return None;
    }
    let Some(series) = exported.get(name) else {
        return Some(format!("`{name}` is not exported"));
    };
    for (label, op, value) in matchers {
        // `le` is every histogram's; the lists hold each bucket.
        // A route's request counter appears once the route is asked; its
        // histogram is rendered for every route from the start.
        let of = if name == "tracking_http_requests_total" && label == "route" {
            &exported["tracking_http_request_duration_seconds_count"]
        } else {
            series
        };
        let values: BTreeSet<&str> = of
            .iter()
            .filter_map(|s| s.get(label).map(String::as_str))
            .collect();
        if values.is_empty() {
            return Some(format!("`{name}` has no label `{label}`"));
        }
        // Exact values, and the plain alternatives of a regex, must exist.
        // `status` is absent from the lists until a status is answered: its
        // patterns (5.., [25]..) are not values.
        let wanted: Vec<&str> = match op.as_str() {
            "=" | "!=" => vec![value.as_str()],
            _ => value
                .split('|')
                .filter(|v| v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
                .collect(),
        };
        for v in wanted {
            if label != "status" && !values.contains(v) {
                return Some(format!(
                    "`{name}{{{label}{op}\"{value}\"}}`: no series has {label}=\"{v}\" (has {values:?})"
                ));
            }
        }
    }
    None
}

#[test]
fn every_rule_and_panel_selects_series_the_services_export() {
    let exported = exported();
    let (rules, recorded) = rule_exprs();
    let panels = dashboard_exprs();
    assert!(rules.len() >= 30, "rules.yaml: {} expressions", rules.len());
    assert!(
        panels.len() >= 30,
        "dashboard.json: {} queries",
        panels.len()
    );
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (file, exprs) in [("rules.yaml", &rules), ("dashboard.json", &panels)] {
        for expr in exprs.iter() {
            for s in selectors(expr) {
                used.insert(s.0.clone());
                if let Some(p) = check(&s, &exported, &recorded) {
                    problems.push(format!("{file}: {p}\n    in {expr}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every recording rule is used by an alert or a panel.
    let unused: Vec<_> = recorded.difference(&used).collect();
    assert!(unused.is_empty(), "recorded but never used: {unused:?}");
}

#[test]
fn the_checker_catches_a_renamed_metric_and_a_wrong_label_value() {
    let exported = exported();
    let recorded = BTreeSet::new();
    let bad = [
        r#"sum(rate(tracking_events_acepted_total[5m]))"#,
        r#"sum(rate(tracking_sessions_total{outcome="unknown"}[5m]))"#,
        r#"sum(rate(tracking_requests_shed_total{reason=~"inflight|nope"}[5m]))"#,
        r#"sum(rate(tracking_sessions_total{flavour="x"}[5m]))"#,
    ];
    for expr in bad {
        let found = selectors(expr)
            .iter()
            .any(|s| check(s, &exported, &recorded).is_some());
        assert!(found, "not caught: {expr}");
    }
    let good = r#"sum by (le) (rate(tracking_http_request_duration_seconds_bucket{route="events",le="0.05"}[5m])) / on() group_left sum(tracking_ready) > (14.4 * 0.001)"#;
    let sel = selectors(good);
    assert_eq!(
        sel.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        [
            "tracking_http_request_duration_seconds_bucket",
            "tracking_ready"
        ]
    );
    assert!(sel.iter().all(|s| check(s, &exported, &recorded).is_none()));
}

mod prometheus {
    //! A real Prometheus (Debian's `prometheus` package) scraping the
    //! binaries' admin listeners with the rules loaded.

    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::common::process::{ApiProcess, bootstrap, post_json, request, workspace_binary};
    use test_support::{BigtableEmulator, Gate, PubsubEmulator};

    fn prometheus_binary() -> PathBuf {
        for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
            if std::path::Path::new(p).exists() {
                return p.into();
            }
        }
        panic!(
            "Prometheus is needed for this test but was not found.\n\
             Install Debian's package: sudo apt-get install -y prometheus (scripts/test does)"
        );
    }

    struct Prometheus {
        child: Child,
        addr: SocketAddr,
        _dir: tempfile::TempDir,
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts Prometheus scraping `targets` (job → admin address) every
    /// second, with rules.yaml loaded and every group evaluated every 2 s
    /// (production: 30 s and 5 m; the test cannot wait that long).
    fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = super::repo("k8s/monitoring/rules.yaml")
            .replace("interval: 30s", "interval: 2s")
            .replace("interval: 5m", "interval: 2s");
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 2s\nrule_files: [rules.yaml]\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{targets: ['{addr}']}}]\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let child = Command::new(prometheus_binary())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn api(p: &Prometheus, path: &str) -> Value {
        // Null until it listens.
        match request(p.addr, "GET", path, &[], b"").await {
            Ok(r) if r.header("transfer-encoding") == Some("chunked") => {
                serde_json::from_slice(&dechunk(&r.body)).unwrap_or(Value::Null)
            }
            Ok(r) => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// A chunked body's data.
    fn dechunk(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
            b = &b[eol + 2 + size + 2..];
        }
        out
    }

    fn url_encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// The state (`pending`, `firing`) of `alert`, if active.
    async fn alert_state(p: &Prometheus, alert: &str) -> Option<String> {
        let v = api(p, "/api/v1/alerts").await;
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == alert)
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
    }

    async fn active(p: &Prometheus) -> Vec<String> {
        let v = api(p, "/api/v1/alerts").await;
        v["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|a| format!("{} ({})", a["labels"]["alertname"], a["state"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_for(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !ok().await {
            assert!(start.elapsed() < within, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        start.elapsed()
    }

    /// tracking-api (Bigtable sessions, Pub/Sub through a gate, the
    /// parallel run against a migration-proxy with no Aerospike) and
    /// migration-proxy, scraped by Prometheus. A Pub/Sub outage makes
    /// `TrackingBacklogGrowing` pending in Prometheus' own `/api/v1/alerts`;
    /// it resolves once the gate reopens; every dashboard query then
    /// returns data. Prints which alerts were active and when.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pubsub_outage_raises_the_backlog_alert_in_prometheus_and_it_resolves() {
        let bt = BigtableEmulator::bigtable();
        let ps = PubsubEmulator::pubsub();
        let gate = Gate::start(ps.addr);
        let spool = tempfile::tempdir().unwrap();
        let (bt_host, ps_host, gate_host) = (bt.host(), ps.host(), gate.host());
        // `$MIGRATION_PROXY_BIN` (`.ci/run`: the release build), or cargo's.
        let proxy_bin = std::env::var_os("MIGRATION_PROXY_BIN")
            .map_or_else(|| workspace_binary("migration-proxy"), PathBuf::from);
        let proxy =
            ApiProcess::start_program(&proxy_bin, &[("MIGRATION_AEROSPIKE_HOSTS", "127.0.0.1:1")]);
        let proxy_url = format!("http://{}", proxy.addr);
        let mut env = vec![
            ("TRACKING_SESSION_STORE", "bigtable"),
            ("TRACKING_BIGTABLE_PROJECT", "p"),
            ("TRACKING_BIGTABLE_INSTANCE", "i"),
            ("BIGTABLE_EMULATOR_HOST", bt_host.as_str()),
            ("TRACKING_SINK", "pubsub"),
            ("TRACKING_PUBSUB_PROJECT", "p"),
            ("TRACKING_PUBSUB_TOPIC", "events"),
            ("PUBSUB_EMULATOR_HOST", ps_host.as_str()),
            ("TRACKING_SPOOL_DIR", spool.path().to_str().unwrap()),
            ("TRACKING_DEADLETTER", "discard"),
            ("TRACKING_MIGRATION_MODE", "parallel"),
            ("TRACKING_MIGRATION_URL", proxy_url.as_str()),
        ];
        bootstrap(&env);
        env.retain(|(k, _)| *k != "PUBSUB_EMULATOR_HOST");
        env.push(("PUBSUB_EMULATOR_HOST", gate_host.as_str()));
        let api_process = ApiProcess::start(&env);
        let prom = start(&[
            ("tracking-api", api_process.admin),
            ("migration-proxy", proxy.admin),
        ]);

        // Events all along: 20 a second.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let (stop, addr) = (Arc::clone(&stop), api_process.addr);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // One in 20 refused (a 400), for the panels of refusals.
                    let ty = if n.is_multiple_of(20) {
                        "Not A Type"
                    } else {
                        "page_view"
                    };
                    let body = format!(r#"{{"type":"{ty}","client_id":"m-{}"}}"#, n % 50);
                    let _ = post_json(addr, &body).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        wait_for("both targets up", Duration::from_secs(60), async || {
            let v = api(&prom, "/api/v1/targets").await;
            v["data"]["activeTargets"]
                .as_array()
                .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["health"] == "up"))
        })
        .await;
        // A few evaluations of healthy traffic first.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(alert_state(&prom, "TrackingBacklogGrowing").await, None);

        gate.close();
        let pending = wait_for(
            "TrackingBacklogGrowing pending",
            Duration::from_secs(120),
            async || alert_state(&prom, "TrackingBacklogGrowing").await.is_some(),
        )
        .await;
        let during = active(&prom).await;
        eprintln!(
            "gate closed: TrackingBacklogGrowing active after {pending:?}; active alerts: {during:?}"
        );

        gate.open();
        let resolved = wait_for(
            "TrackingBacklogGrowing resolved",
            Duration::from_secs(180),
            async || alert_state(&prom, "TrackingBacklogGrowing").await.is_none(),
        )
        .await;
        eprintln!(
            "gate reopened: resolved after {resolved:?}; active alerts: {:?}",
            active(&prom).await
        );
        stop.store(true, Ordering::Relaxed);
        traffic.await.unwrap();

        // Every panel's query returns data from this Prometheus.
        let mut empty = Vec::new();
        let panels = super::dashboard_exprs();
        for expr in &panels {
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "5m");
            let path = format!("/api/v1/query?query={}", url_encode(&q));
            let mut v = api(&prom, &path).await;
            if v.is_null() {
                // One more try: a connection refused or cut once is not the query's.
                v = api(&prom, &path).await;
            }
            let ok = v["status"] == "success"
                && v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty());
            if !ok {
                empty.push(format!("{expr}\n    → {v}"));
            }
        }
        eprintln!(
            "dashboard: {} of {} queries returned data",
            panels.len() - empty.len(),
            panels.len()
        );
        assert!(
            empty.is_empty(),
            "queries without data:\n{}",
            empty.join("\n")
        );
    }
}
