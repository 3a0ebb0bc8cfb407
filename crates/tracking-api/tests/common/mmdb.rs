//! Writes small MaxMind DB (MMDB v2) files for tests, so geo-IP lookups are
//! tested against a database the project makes itself, not one fetched.
//! IPv4-only tree, 24-bit records, data maps with strings and arrays.

#![allow(dead_code)]

use std::net::Ipv4Addr;

/// A value in the MMDB data section.
#[derive(Debug, Clone)]
pub enum Value {
    Str(&'static str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, Value)>),
    Array(Vec<Value>),
}

fn control(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (ty_bits, ext) = if ty <= 7 {
        (ty << 5, None)
    } else {
        (0, Some(ty - 7))
    };
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    out.push(ty_bits | size_bits);
    if let Some(e) = ext {
        out.push(e);
    }
    out.extend(extra);
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, ty, 8 - skip);
    out.extend(&bytes[skip..]);
}

pub fn encode(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend(s.as_bytes());
        }
        Value::U16(n) => uint(out, 5, u64::from(*n)),
        Value::U32(n) => uint(out, 6, u64::from(*n)),
        Value::U64(n) => uint(out, 9, *n),
        Value::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(out, &Value::Str(k));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(out, v);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a database mapping each IPv4 network to its record.
pub fn build(networks: &[(Ipv4Addr, u8, Value)]) -> Vec<u8> {
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    for (net, prefix, value) in networks {
        let offset = data.len();
        encode(&mut data, value);
        let bits = u32::from(*net);
        let mut node = 0;
        for i in 0..*prefix {
            let bit = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == *prefix {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    _ => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for pair in &nodes {
        for rec in pair {
            let v = match *rec {
                Rec::Empty => count,
                Rec::Node(n) => n,
                Rec::Data(off) => count + 16 + off,
            };
            out.extend(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend([0u8; 16]);
    out.extend(data);
    out.extend(b"\xAB\xCD\xEFMaxMind.com");
    encode(
        &mut out,
        &Value::Map(vec![
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_763_000_000)),
            ("database_type", Value::Str("GeoIP2-City")),
            (
                "description",
                Value::Map(vec![("en", Value::Str("tracking-api test database"))]),
            ),
            ("ip_version", Value::U16(4)),
            ("languages", Value::Array(vec![Value::Str("en")])),
            ("node_count", Value::U32(count as u32)),
            ("record_size", Value::U16(24)),
        ]),
    );
    out
}

/// A City record: country ISO code, first subdivision ISO code, English city name.
pub fn city(country: &'static str, region: &'static str, name: &'static str) -> Value {
    Value::Map(vec![
        (
            "city",
            Value::Map(vec![("names", Value::Map(vec![("en", Value::Str(name))]))]),
        ),
        (
            "country",
            Value::Map(vec![("iso_code", Value::Str(country))]),
        ),
        (
            "subdivisions",
            Value::Array(vec![Value::Map(vec![("iso_code", Value::Str(region))])]),
        ),
    ])
}
