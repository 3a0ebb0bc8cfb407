//! The `aerospike` crate (the client migration-proxy uses) against the
//! stand-in, served in-process on a free port.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use aerospike::{
    Bins, Client, ClientPolicy, Expiration, GenerationPolicy, ReadPolicy, RecordExistsAction,
    Value, WritePolicy, as_bin, as_key,
};

async fn standin() -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(aerospike_standin::serve(
        listener,
        aerospike_standin::Store::new(vec!["tracking".into()]),
    ));
    Client::new(&ClientPolicy::default(), &addr.to_string())
        .await
        .unwrap()
}

#[tokio::test]
async fn crud_ttl_generation_and_policies() {
    let client = standin().await;
    let read = ReadPolicy::default();
    let key = as_key!("tracking", "short_sessions", "visitor-1");

    let mut write = WritePolicy {
        expiration: Expiration::Seconds(1800),
        ..WritePolicy::default()
    };
    client
        .put(&write, &key, &[as_bin!("sid", "s-1")])
        .await
        .unwrap();
    let rec = client.get(&read, &key, Bins::All).await.unwrap();
    assert_eq!(rec.bins.get("sid"), Some(&Value::from("s-1")));
    assert_eq!(rec.generation, 1);
    let ttl = rec.time_to_live().unwrap().as_secs();
    assert!((1790..=1800).contains(&ttl), "ttl {ttl}");

    // Touch renews the TTL and bumps the generation.
    write.expiration = Expiration::Seconds(3600);
    client.touch(&write, &key).await.unwrap();
    let rec = client.get(&read, &key, Bins::None).await.unwrap();
    assert_eq!(rec.generation, 2);
    assert!(rec.time_to_live().unwrap().as_secs() > 3500);

    // Create-only refuses an existing record; a generation check refuses a stale one.
    let create = WritePolicy {
        record_exists_action: RecordExistsAction::CreateOnly,
        ..WritePolicy::default()
    };
    assert!(
        client
            .put(&create, &key, &[as_bin!("sid", "s-2")])
            .await
            .is_err()
    );
    let mut checked = WritePolicy {
        generation_policy: GenerationPolicy::ExpectGenEqual,
        generation: 1,
        ..WritePolicy::default()
    };
    assert!(
        client
            .put(&checked, &key, &[as_bin!("sid", "s-3")])
            .await
            .is_err()
    );
    checked.generation = 2;
    client
        .put(&checked, &key, &[as_bin!("sid", "s-3")])
        .await
        .unwrap();

    assert!(client.exists(&read, &key).await.unwrap());
    assert!(client.delete(&write, &key).await.unwrap());
    assert!(!client.delete(&write, &key).await.unwrap());
    assert!(!client.exists(&read, &key).await.unwrap());
}

#[tokio::test]
async fn expired_records_are_gone() {
    let client = standin().await;
    let key = as_key!("tracking", "via", "visitor-2");
    let write = WritePolicy {
        expiration: Expiration::Seconds(1),
        ..WritePolicy::default()
    };
    client
        .put(&write, &key, &[as_bin!("source", "news")])
        .await
        .unwrap();
    assert!(client.exists(&ReadPolicy::default(), &key).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(!client.exists(&ReadPolicy::default(), &key).await.unwrap());
}

/// The bulk copy's access path: a partition-range scan of one set returns
/// every live record of those partitions once, with its stored user key.
#[tokio::test]
async fn scan_by_partition_returns_each_record_once_with_its_key() {
    use aerospike::{PartitionFilter, QueryPolicy, Statement};
    use futures_util::StreamExt;

    let client = standin().await;
    let write = WritePolicy {
        send_key: true,
        expiration: Expiration::Seconds(600),
        ..WritePolicy::default()
    };
    for i in 0..500 {
        let key = as_key!("tracking", "long_sessions", format!("visitor-{i}"));
        client
            .put(&write, &key, &[as_bin!("sid", format!("l-{i}"))])
            .await
            .unwrap();
    }
    // Another set is not part of the scan.
    let other = as_key!("tracking", "via", "visitor-0");
    client
        .put(&write, &other, &[as_bin!("source", "ad")])
        .await
        .unwrap();

    let mut seen = std::collections::HashMap::new();
    for begin in (0..4096).step_by(1024) {
        let stmt = Statement::new("tracking", "long_sessions", Bins::All);
        let set = client
            .query(
                &QueryPolicy::default(),
                PartitionFilter::by_range(begin, 1024),
                stmt,
            )
            .await
            .unwrap();
        let mut stream = set.into_stream();
        while let Some(rec) = stream.next().await {
            let rec = rec.unwrap();
            let key = rec.key.clone().unwrap();
            assert!((begin..begin + 1024).contains(&key.partition_id()));
            let Some(Value::String(id)) = key.user_key().cloned() else {
                panic!("no user key in {key:?}");
            };
            let sid = rec.bins.get("sid").cloned();
            assert!(seen.insert(id, sid).is_none(), "a record came twice");
        }
    }
    assert_eq!(seen.len(), 500);
    assert_eq!(
        seen.get("visitor-7"),
        Some(&Some(Value::String("l-7".into())))
    );
}
