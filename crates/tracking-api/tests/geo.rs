//! Geo-IP enrichment against a MaxMind-format database the test writes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::IpAddr;

use common::mmdb::{build, city};
use common::*;
use http::StatusCode;
use tracking_api::geo::GeoLookup;

fn database() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.mmdb");
    let db = build(&[
        (
            "203.0.113.0".parse().unwrap(),
            24,
            city("JP", "13", "Tokyo"),
        ),
        (
            "198.51.100.0".parse().unwrap(),
            25,
            city("DE", "BE", "Berlin"),
        ),
    ]);
    std::fs::write(&path, db).unwrap();
    (dir, path)
}

#[test]
fn looks_up_country_region_and_city() {
    let (_dir, path) = database();
    let geo = GeoLookup::open(&path).unwrap();
    let check = |ip: &str, expected: Option<(&str, &str, &str)>| {
        let got = geo.lookup(ip.parse::<IpAddr>().unwrap()).map(|g| {
            (
                g.country.as_deref().unwrap().to_owned(),
                g.region.as_deref().unwrap().to_owned(),
                g.city.as_deref().unwrap().to_owned(),
            )
        });
        let expected = expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(got, expected, "{ip}");
    };
    check("203.0.113.77", Some(("JP", "13", "Tokyo")));
    check("198.51.100.1", Some(("DE", "BE", "Berlin")));
    check("198.51.100.200", None); // outside the /25
    check("192.0.2.1", None);
    check("2001:db8::1", None); // IPv6 in an IPv4-only database
}

#[test]
fn a_missing_or_corrupt_database_is_a_clear_start_up_error() {
    let err = GeoLookup::open(std::path::Path::new("/nonexistent/city.mmdb")).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot open geo-IP database /nonexistent/city.mmdb"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mmdb");
    std::fs::write(&bad, b"not a database").unwrap();
    assert!(GeoLookup::open(&bad).is_err());
}

#[tokio::test]
async fn events_carry_geo_from_the_full_address_but_only_the_anonymised_ip() {
    let (_dir, path) = database();
    let t = TestApp::new(Options {
        geo: Some(GeoLookup::open(&path).unwrap()),
        ..Options::default()
    });
    // TestApp's peer is 203.0.113.77.
    let (resp, _) = t.post(r#"{"type":"page_view","client_id":"v"}"#).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let e = t.sink.take().remove(0);
    assert_eq!(
        e["geo"],
        serde_json::json!({"country": "JP", "region": "13", "city": "Tokyo"})
    );
    assert_eq!(e["ip"], "203.0.113.0");
}
