//! Bad input: each gets etcd's gRPC code and message, and the server keeps serving.

use chorus_compat::{Cluster, Code, Flavor, status_of};
use etcd_client::{PutOptions, Txn, TxnOp};

use super::single;

#[tokio::test]
async fn request_too_large_and_too_many_txn_ops() {
    // Goal: a request over --max-request-bytes and a txn over --max-txn-ops are refused with
    // etcd's errors, and the member still serves afterwards.
    // Method: a member with small limits; one request just over each limit, then a good put.
    let cluster = Cluster::start(
        Flavor::from_env(),
        1,
        &["--max-request-bytes=4096", "--max-txn-ops=8"],
    )
    .await;
    let mut c = cluster.client().await;
    let (code, message) = status_of(c.put("big", vec![b'x'; 8192], None).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "etcdserver: request is too large");

    let ops: Vec<TxnOp> = (0..9)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let (code, message) = status_of(c.txn(Txn::new().and_then(ops)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "etcdserver: too many operations in txn request");
    let ops: Vec<TxnOp> = (0..8)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let resp = c
        .txn(Txn::new().and_then(ops))
        .await
        .expect("a txn at the limit");
    assert!(resp.succeeded());

    c.put("after", "ok", None)
        .await
        .expect("the member still serves");
}

#[tokio::test]
async fn empty_key_and_duplicate_txn_keys() {
    // Goal: an empty key and a txn writing one key twice are refused as etcd refuses them.
    // Method: send each and compare code and message.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let (code, message) = status_of(c.put("", "v", None).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "etcdserver: key is not provided");
    let (code, message) = status_of(c.get("", None).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "etcdserver: key is not provided");
    let txn = Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]);
    let (code, message) = status_of(c.txn(txn).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, "etcdserver: duplicate key given in txn request");
}

#[tokio::test]
async fn unknown_lease() {
    // Goal: attaching a key to a lease that does not exist fails with etcd's NotFound error.
    // Method: put with lease id 0x1234; revoke and time-to-live of the same id.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let (code, message) = status_of(
        c.put("k", "v", Some(PutOptions::new().with_lease(0x1234)))
            .await,
    );
    assert_eq!(code, Code::NotFound);
    assert_eq!(message, "etcdserver: requested lease not found");
    let (code, message) = status_of(c.lease_revoke(0x1234).await);
    assert_eq!(code, Code::NotFound);
    assert_eq!(message, "etcdserver: requested lease not found");
}
