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
