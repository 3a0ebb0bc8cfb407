//! The alerting rules and the dashboard (`k8s/monitoring/`) against the
//! series the services really export (`tests/series/`, themselves checked
//! against the binaries by `tests/series.rs`): every metric name an
//! expression selects exists, and every label it matches on exists with the
//! values it names. A metric renamed or removed, or a label value changed,
//! fails here before an alert goes silent in production. (`promtool check
//! rules` and `promtool test rules` run in `.ci/run`.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

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
