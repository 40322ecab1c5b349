//! Lease: grant, keep-alive, time-to-live with keys, leases, revoke and expiry.

use std::time::{Duration, Instant};

use chorus_compat::GUARD;
use etcd_client::{LeaseTimeToLiveOptions, PutOptions};

use super::single;

#[tokio::test]
async fn grant_keep_alive_time_to_live_leases_and_revoke() {
    // Goal: the lease lifecycle as clients use it.
    // Method: grant with a chosen id, attach two keys, keep alive, read time-to-live with
    // keys, list leases, revoke and check the keys are gone.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let granted = c
        .lease_grant(
            60,
            Some(etcd_client::LeaseGrantOptions::new().with_id(0x77)),
        )
        .await
        .expect("grant");
    assert_eq!(granted.id(), 0x77);
    assert_eq!(granted.ttl(), 60);
    for k in ["l/1", "l/2"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(0x77)))
            .await
            .expect("put with lease");
    }
    let got = c.get("l/1", None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), 0x77);

    let (mut keeper, mut responses) = c.lease_keep_alive(0x77).await.expect("keep alive");
    keeper.keep_alive().await.expect("send keep alive");
    let answer = responses
        .message()
        .await
        .expect("keep-alive answer")
        .expect("open");
    assert_eq!(answer.id(), 0x77);
    assert_eq!(answer.ttl(), 60);

    let ttl = c
        .lease_time_to_live(0x77, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60);
    let mut keys: Vec<Vec<u8>> = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"l/1".to_vec(), b"l/2".to_vec()]);

    let leases = c.leases().await.expect("leases");
    assert!(leases.leases().iter().any(|l| l.id() == 0x77));

    c.lease_revoke(0x77).await.expect("revoke");
    let left = c
        .get("l/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert!(left.kvs().is_empty(), "revoking deletes the lease's keys");
    let gone = c
        .lease_time_to_live(0x77, None)
        .await
        .expect("time to live of a revoked lease");
    assert_eq!(gone.ttl(), -1);
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys() {
    // Goal: when a lease is not kept alive its keys are deleted.
    // Method: grant a short lease, attach a key, wait (guarded) for the key to disappear.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let id = c.lease_grant(2, None).await.expect("grant").id();
    c.put("short", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    let start = Instant::now();
    loop {
        if c.get("short", None).await.expect("get").kvs().is_empty() {
            break;
        }
        assert!(start.elapsed() < GUARD, "the key outlived its lease");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ttl = c.lease_time_to_live(id, None).await.expect("time to live");
    assert_eq!(ttl.ttl(), -1);
}
