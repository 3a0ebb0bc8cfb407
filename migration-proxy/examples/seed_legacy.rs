//! Writes legacy visitors into an Aerospike node (the stand-in, for the
//! benchmark): `seed_legacy HOST:PORT VISITORS` → short and long session of
//! every visitor `v-<n>`, a via for every third, with stored keys. Prints
//! `{"visitors":…,"records":…,"seconds":…}`.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use aerospike::{Client, ClientPolicy, Expiration, WritePolicy, as_bin, as_key};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(host), Some(n)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: seed_legacy HOST:PORT VISITORS");
    };
    let n: usize = n.parse()?;
    let client = Client::new(&ClientPolicy::default(), &host).await?;
    let policy = |ttl| WritePolicy {
        send_key: true,
        expiration: Expiration::Seconds(ttl),
        ..WritePolicy::default()
    };
    let started = Instant::now();
    let records = futures_util::stream::iter(0..n)
        .map(|i| {
            let client = &client;
            async move {
                let id = format!("v-{i}");
                let sid = uuid::Uuid::from_u128(i as u128).to_string();
                let lid = uuid::Uuid::from_u128((1 << 64) + i as u128).to_string();
                client
                    .put(
                        &policy(1200),
                        &as_key!("tracking", "short_sessions", id.as_str()),
                        &[as_bin!("sid", sid)],
                    )
                    .await?;
                client
                    .put(
                        &policy(60 * 86_400),
                        &as_key!("tracking", "long_sessions", id.as_str()),
                        &[as_bin!("sid", lid)],
                    )
                    .await?;
                let mut written = 2;
                if i % 3 == 0 {
                    client
                        .put(
                            &policy(10 * 86_400),
                            &as_key!("tracking", "via", id.as_str()),
                            &[
                                as_bin!("source", "newsletter"),
                                as_bin!("campaign", format!("c{}", i % 50)),
                            ],
                        )
                        .await?;
                    written += 1;
                }
                Ok::<_, aerospike::Error>(written)
            }
        })
        .buffer_unordered(32)
        .fold(Ok::<usize, aerospike::Error>(0), |acc, r| async move {
            Ok(acc? + r?)
        })
        .await?;
    println!(
        "{{\"visitors\":{n},\"records\":{records},\"seconds\":{:.2}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
