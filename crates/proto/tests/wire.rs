//! Wire-format tests of `chorus-proto`.
//!
//! Goal: prove that what Chorus puts on the wire is what etcd clients expect, and that the peer
//! protocol survives a trip through its encoding. Method: (a) read the compiled descriptor set and
//! compare every etcd service with etcd's method list and streaming shapes; (b) compare key
//! messages and enums field by field with a table of etcd's field names, numbers and types;
//! (c) compare the generated encoders with bytes worked out by hand from the protobuf encoding
//! rules; (d) round-trip a peer `MessageBatch` covering every Raft message kind.
//!
//! The tables are written from etcd's published definitions (3.4/3.5), independently of the
//! `.proto` files, so a renumbered or renamed field fails here.

use std::collections::{BTreeMap, BTreeSet};

use chorus_proto::etcdserverpb::{self, Compare, PutRequest, ResponseHeader, compare};
use chorus_proto::peer::{self, message::Body};
use chorus_proto::{FILE_DESCRIPTOR_SET, mvccpb, v3electionpb, v3lockpb};
use prost::Message as _;
use prost::bytes::Bytes;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

// -------------------------------------------------------------------------------------------------
// Descriptor index
// -------------------------------------------------------------------------------------------------

/// Every message, enum and service of the descriptor set, by full name without a leading dot
/// (`etcdserverpb.RangeRequest`, `mvccpb.Event.EventType`).
struct Index {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
    services: BTreeMap<String, ServiceDescriptorProto>,
    packages: BTreeMap<String, String>,
}

impl Index {
    fn load() -> Index {
        let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("FILE_DESCRIPTOR_SET must decode as a FileDescriptorSet");
        let mut index = Index {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
            services: BTreeMap::new(),
            packages: BTreeMap::new(),
        };
        for file in &set.file {
            let package = file.package().to_owned();
            index
                .packages
                .insert(file.name().to_owned(), package.clone());
            for message in &file.message_type {
                index.add_message(&package, message);
            }
            for enumeration in &file.enum_type {
                index.enums.insert(
                    format!("{package}.{}", enumeration.name()),
                    enumeration.clone(),
                );
            }
            for service in &file.service {
                index
                    .services
                    .insert(format!("{package}.{}", service.name()), service.clone());
            }
        }
        index
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for enumeration in &message.enum_type {
            self.enums.insert(
                format!("{name}.{}", enumeration.name()),
                enumeration.clone(),
            );
        }
        self.messages.insert(name, message.clone());
    }

    fn message(&self, name: &str) -> &DescriptorProto {
        self.messages
            .get(name)
            .unwrap_or_else(|| panic!("message {name} is not defined"))
    }
}

// -------------------------------------------------------------------------------------------------
// (a) Services
// -------------------------------------------------------------------------------------------------

/// One RPC as a descriptor states it: name, request type, response type, client streaming,
/// server streaming. Type names are full names with their leading dot.
type Rpc = (String, String, String, bool, bool);

/// Streaming shapes: (client streams, server streams).
const UNARY: (bool, bool) = (false, false);
const SERVER_STREAM: (bool, bool) = (false, true);
const CLIENT_STREAM: (bool, bool) = (true, false);
const BIDI_STREAM: (bool, bool) = (true, true);

fn rpc(package: &str, name: &str, input: &str, output: &str, shape: (bool, bool)) -> Rpc {
    let (client, server) = shape;
    let full = |ty: &str| format!(".{package}.{ty}");
    (name.to_owned(), full(input), full(output), client, server)
}

/// etcd's services, with their methods in declaration order.
fn expected_services() -> Vec<(&'static str, Vec<Rpc>)> {
    let e = |name, input, output, shape| rpc("etcdserverpb", name, input, output, shape);
    let lock = |name, input, output| rpc("v3lockpb", name, input, output, UNARY);
    let elect = |name, input, output, shape| rpc("v3electionpb", name, input, output, shape);
    vec![
        (
            "etcdserverpb.KV",
            vec![
                e("Range", "RangeRequest", "RangeResponse", UNARY),
                e("Put", "PutRequest", "PutResponse", UNARY),
                e(
                    "DeleteRange",
                    "DeleteRangeRequest",
                    "DeleteRangeResponse",
                    UNARY,
                ),
                e("Txn", "TxnRequest", "TxnResponse", UNARY),
                e("Compact", "CompactionRequest", "CompactionResponse", UNARY),
            ],
        ),
        (
            "etcdserverpb.Watch",
            vec![e("Watch", "WatchRequest", "WatchResponse", BIDI_STREAM)],
        ),
        (
            "etcdserverpb.Lease",
            vec![
                e(
                    "LeaseGrant",
                    "LeaseGrantRequest",
                    "LeaseGrantResponse",
                    UNARY,
                ),
                e(
                    "LeaseRevoke",
                    "LeaseRevokeRequest",
                    "LeaseRevokeResponse",
                    UNARY,
                ),
                e(
                    "LeaseKeepAlive",
                    "LeaseKeepAliveRequest",
                    "LeaseKeepAliveResponse",
                    BIDI_STREAM,
                ),
                e(
                    "LeaseTimeToLive",
                    "LeaseTimeToLiveRequest",
                    "LeaseTimeToLiveResponse",
                    UNARY,
                ),
                e(
                    "LeaseLeases",
                    "LeaseLeasesRequest",
                    "LeaseLeasesResponse",
                    UNARY,
                ),
            ],
        ),
        (
            "etcdserverpb.Cluster",
            vec![
                e("MemberAdd", "MemberAddRequest", "MemberAddResponse", UNARY),
                e(
                    "MemberRemove",
                    "MemberRemoveRequest",
                    "MemberRemoveResponse",
                    UNARY,
                ),
                e(
                    "MemberUpdate",
                    "MemberUpdateRequest",
                    "MemberUpdateResponse",
                    UNARY,
                ),
                e(
                    "MemberList",
                    "MemberListRequest",
                    "MemberListResponse",
                    UNARY,
                ),
                e(
                    "MemberPromote",
                    "MemberPromoteRequest",
                    "MemberPromoteResponse",
                    UNARY,
                ),
            ],
        ),
        (
            "etcdserverpb.Maintenance",
            vec![
                e("Alarm", "AlarmRequest", "AlarmResponse", UNARY),
                e("Status", "StatusRequest", "StatusResponse", UNARY),
                e(
                    "Defragment",
                    "DefragmentRequest",
                    "DefragmentResponse",
                    UNARY,
                ),
                e("Hash", "HashRequest", "HashResponse", UNARY),
                e("HashKV", "HashKVRequest", "HashKVResponse", UNARY),
                e(
                    "Snapshot",
                    "SnapshotRequest",
                    "SnapshotResponse",
                    SERVER_STREAM,
                ),
                e(
                    "MoveLeader",
                    "MoveLeaderRequest",
                    "MoveLeaderResponse",
                    UNARY,
                ),
                e("Downgrade", "DowngradeRequest", "DowngradeResponse", UNARY),
            ],
        ),
        ("etcdserverpb.Auth", auth_rpcs()),
        (
            "v3lockpb.Lock",
            vec![
                lock("Lock", "LockRequest", "LockResponse"),
                lock("Unlock", "UnlockRequest", "UnlockResponse"),
            ],
        ),
        (
            "v3electionpb.Election",
            vec![
                elect("Campaign", "CampaignRequest", "CampaignResponse", UNARY),
                elect("Proclaim", "ProclaimRequest", "ProclaimResponse", UNARY),
                elect("Leader", "LeaderRequest", "LeaderResponse", UNARY),
                elect("Observe", "LeaderRequest", "LeaderResponse", SERVER_STREAM),
                elect("Resign", "ResignRequest", "ResignResponse", UNARY),
            ],
        ),
    ]
}

/// The Auth service: every method is unary; method `X` takes `<stem>Request` and returns
/// `<stem>Response`, where the stem is `AuthX` for the user and role methods and the method name
/// itself for the other four.
fn auth_rpcs() -> Vec<Rpc> {
    let methods = [
        ("AuthEnable", "AuthEnable"),
        ("AuthDisable", "AuthDisable"),
        ("AuthStatus", "AuthStatus"),
        ("Authenticate", "Authenticate"),
        ("UserAdd", "AuthUserAdd"),
        ("UserGet", "AuthUserGet"),
        ("UserList", "AuthUserList"),
        ("UserDelete", "AuthUserDelete"),
        ("UserChangePassword", "AuthUserChangePassword"),
        ("UserGrantRole", "AuthUserGrantRole"),
        ("UserRevokeRole", "AuthUserRevokeRole"),
        ("RoleAdd", "AuthRoleAdd"),
        ("RoleGet", "AuthRoleGet"),
        ("RoleList", "AuthRoleList"),
        ("RoleDelete", "AuthRoleDelete"),
        ("RoleGrantPermission", "AuthRoleGrantPermission"),
        ("RoleRevokePermission", "AuthRoleRevokePermission"),
    ];
    methods
        .into_iter()
        .map(|(method, stem)| {
            let (input, output) = (format!("{stem}Request"), format!("{stem}Response"));
            rpc("etcdserverpb", method, &input, &output, UNARY)
        })
        .collect()
}

fn actual_rpcs(service: &ServiceDescriptorProto) -> Vec<Rpc> {
    service
        .method
        .iter()
        .map(|m| {
            (
                m.name().to_owned(),
                m.input_type().to_owned(),
                m.output_type().to_owned(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect()
}

#[test]
fn etcd_services_have_etcds_methods_and_streaming_shapes() {
    // Goal: an etcd client calling `/etcdserverpb.KV/Range` (and every other method) reaches a
    // method of the same shape. Method: compare each service's method list, in order, with the
    // table, including request/response types and both streaming flags.
    let index = Index::load();
    for (service_name, expected) in expected_services() {
        let service = index
            .services
            .get(service_name)
            .unwrap_or_else(|| panic!("service {service_name} is not defined"));
        assert_eq!(actual_rpcs(service), expected, "methods of {service_name}");
    }
}

#[test]
fn generated_stubs_use_etcds_service_paths() {
    // Goal: the generated tonic servers route by the same full names as the descriptors.
    // Method: compare each generated SERVICE_NAME constant with etcd's name.
    let names = [
        (etcdserverpb::kv_server::SERVICE_NAME, "etcdserverpb.KV"),
        (
            etcdserverpb::watch_server::SERVICE_NAME,
            "etcdserverpb.Watch",
        ),
        (
            etcdserverpb::lease_server::SERVICE_NAME,
            "etcdserverpb.Lease",
        ),
        (
            etcdserverpb::cluster_server::SERVICE_NAME,
            "etcdserverpb.Cluster",
        ),
        (
            etcdserverpb::maintenance_server::SERVICE_NAME,
            "etcdserverpb.Maintenance",
        ),
        (etcdserverpb::auth_server::SERVICE_NAME, "etcdserverpb.Auth"),
        (v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock"),
        (
            v3electionpb::election_server::SERVICE_NAME,
            "v3electionpb.Election",
        ),
        (peer::peer_server::SERVICE_NAME, "chorus.peer.v1.Peer"),
    ];
    for (generated, expected) in names {
        assert_eq!(generated, expected);
    }
}

#[test]
fn peer_service_has_handshake_and_a_snapshot_stream() {
    // Goal: the peer transport's shapes are what the server will implement. Method: compare the
    // `chorus.peer.v1.Peer` method list with the table.
    let index = Index::load();
    let service = index
        .services
        .get("chorus.peer.v1.Peer")
        .expect("Peer service is defined");
    let p = |name, input, output, shape| rpc("chorus.peer.v1", name, input, output, shape);
    let expected = vec![
        p("Handshake", "HandshakeRequest", "HandshakeResponse", UNARY),
        p(
            "InstallSnapshot",
            "SnapshotChunk",
            "SnapshotAck",
            CLIENT_STREAM,
        ),
    ];
    assert_eq!(actual_rpcs(service), expected);
}

#[test]
fn files_declare_etcds_package_names() {
    // Goal: the protobuf packages, which prefix every service path and type URL, are etcd's.
    // Method: compare each compiled file's package with the expected one.
    let index = Index::load();
    let expected = BTreeMap::from([
        ("chorus/peer.proto".to_owned(), "chorus.peer.v1".to_owned()),
        (
            "chorus/internal.proto".to_owned(),
            "chorus.internal.v1".to_owned(),
        ),
        ("etcd/auth.proto".to_owned(), "authpb".to_owned()),
        ("etcd/kv.proto".to_owned(), "mvccpb".to_owned()),
        ("etcd/rpc.proto".to_owned(), "etcdserverpb".to_owned()),
        (
            "etcd/v3election.proto".to_owned(),
            "v3electionpb".to_owned(),
        ),
        ("etcd/v3lock.proto".to_owned(), "v3lockpb".to_owned()),
    ]);
    assert_eq!(index.packages, expected);
}

#[test]
fn every_etcd_3_5_message_is_defined() {
    // Goal: no message of etcd 3.5's client API is missing. Method: look up each name.
    let index = Index::load();
    let etcdserverpb_messages = "ResponseHeader RangeRequest RangeResponse PutRequest PutResponse \
        DeleteRangeRequest DeleteRangeResponse RequestOp ResponseOp Compare TxnRequest \
        TxnResponse CompactionRequest CompactionResponse HashRequest HashKVRequest HashKVResponse \
        HashResponse SnapshotRequest SnapshotResponse WatchRequest WatchCreateRequest \
        WatchCancelRequest WatchProgressRequest WatchResponse LeaseGrantRequest LeaseGrantResponse \
        LeaseRevokeRequest LeaseRevokeResponse LeaseCheckpoint LeaseCheckpointRequest \
        LeaseCheckpointResponse LeaseKeepAliveRequest LeaseKeepAliveResponse \
        LeaseTimeToLiveRequest LeaseTimeToLiveResponse LeaseLeasesRequest LeaseStatus \
        LeaseLeasesResponse Member MemberAddRequest MemberAddResponse MemberRemoveRequest \
        MemberRemoveResponse MemberUpdateRequest MemberUpdateResponse MemberListRequest \
        MemberListResponse MemberPromoteRequest MemberPromoteResponse DefragmentRequest \
        DefragmentResponse MoveLeaderRequest MoveLeaderResponse AlarmRequest AlarmMember \
        AlarmResponse DowngradeRequest DowngradeResponse StatusRequest StatusResponse \
        AuthEnableRequest AuthDisableRequest AuthStatusRequest AuthenticateRequest \
        AuthUserAddRequest AuthUserGetRequest AuthUserDeleteRequest AuthUserChangePasswordRequest \
        AuthUserGrantRoleRequest AuthUserRevokeRoleRequest AuthRoleAddRequest AuthRoleGetRequest \
        AuthUserListRequest AuthRoleListRequest AuthRoleDeleteRequest \
        AuthRoleGrantPermissionRequest AuthRoleRevokePermissionRequest AuthEnableResponse \
        AuthDisableResponse AuthStatusResponse AuthenticateResponse AuthUserAddResponse \
        AuthUserGetResponse AuthUserDeleteResponse AuthUserChangePasswordResponse \
        AuthUserGrantRoleResponse AuthUserRevokeRoleResponse AuthRoleAddResponse \
        AuthRoleGetResponse AuthRoleListResponse AuthUserListResponse AuthRoleDeleteResponse \
        AuthRoleGrantPermissionResponse AuthRoleRevokePermissionResponse";
    let mut missing = Vec::new();
    let others = [
        "mvccpb.KeyValue",
        "mvccpb.Event",
        "authpb.UserAddOptions",
        "authpb.User",
        "authpb.Permission",
        "authpb.Role",
    ];
    let names = etcdserverpb_messages
        .split_whitespace()
        .map(|m| format!("etcdserverpb.{m}"))
        .chain(others.iter().map(|m| (*m).to_owned()));
    for name in names {
        if !index.messages.contains_key(&name) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "messages missing: {missing:?}");
}

// -------------------------------------------------------------------------------------------------
// (b) Fields and enums
// -------------------------------------------------------------------------------------------------

/// What the wire says about one field.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    name: String,
    number: i32,
    ty: Type,
    repeated: bool,
    /// Full name of the message or enum type, for message and enum fields.
    type_name: Option<String>,
    /// The oneof the field belongs to.
    oneof: Option<String>,
}

fn f(name: &str, number: i32, ty: Type) -> Field {
    Field {
        name: name.to_owned(),
        number,
        ty,
        repeated: false,
        type_name: None,
        oneof: None,
    }
}

/// A message-typed or enum-typed field.
fn typed(name: &str, number: i32, ty: Type, type_name: &str) -> Field {
    Field {
        type_name: Some(format!(".{type_name}")),
        ..f(name, number, ty)
    }
}

fn msg(name: &str, number: i32, type_name: &str) -> Field {
    typed(name, number, Type::Message, type_name)
}

fn en(name: &str, number: i32, type_name: &str) -> Field {
    typed(name, number, Type::Enum, type_name)
}

fn rep(field: Field) -> Field {
    Field {
        repeated: true,
        ..field
    }
}

fn oneof(group: &str, field: Field) -> Field {
    Field {
        oneof: Some(group.to_owned()),
        ..field
    }
}

fn actual_fields(message: &DescriptorProto) -> Vec<Field> {
    message
        .field
        .iter()
        .map(|field| describe(message, field))
        .collect()
}

fn describe(message: &DescriptorProto, field: &FieldDescriptorProto) -> Field {
    let oneof = field.oneof_index.map(|i| {
        message.oneof_decl[usize::try_from(i).unwrap()]
            .name()
            .to_owned()
    });
    Field {
        name: field.name().to_owned(),
        number: field.number(),
        ty: field.r#type(),
        repeated: field.label() == Label::Repeated,
        type_name: field.type_name.clone(),
        oneof,
    }
}

const HEADER: &str = "etcdserverpb.ResponseHeader";
const KV: &str = "mvccpb.KeyValue";

/// etcd's field tables for the messages clients use most, plus every message that has a oneof.
/// Each entry lists all fields of the message, so an extra field fails as well as a wrong one.
fn expected_fields() -> Vec<(&'static str, Vec<Field>)> {
    use Type::{Bool, Bytes, Int64, String as Str, Uint32, Uint64};
    let range = "etcdserverpb.RangeRequest";
    vec![
        (
            HEADER,
            vec![
                f("cluster_id", 1, Uint64),
                f("member_id", 2, Uint64),
                f("revision", 3, Int64),
                f("raft_term", 4, Uint64),
            ],
        ),
        (
            range,
            vec![
                f("key", 1, Bytes),
                f("range_end", 2, Bytes),
                f("limit", 3, Int64),
                f("revision", 4, Int64),
                en("sort_order", 5, "etcdserverpb.RangeRequest.SortOrder"),
                en("sort_target", 6, "etcdserverpb.RangeRequest.SortTarget"),
                f("serializable", 7, Bool),
                f("keys_only", 8, Bool),
                f("count_only", 9, Bool),
                f("min_mod_revision", 10, Int64),
                f("max_mod_revision", 11, Int64),
                f("min_create_revision", 12, Int64),
                f("max_create_revision", 13, Int64),
            ],
        ),
        (
            "etcdserverpb.RangeResponse",
            vec![
                msg("header", 1, HEADER),
                rep(msg("kvs", 2, KV)),
                f("more", 3, Bool),
                f("count", 4, Int64),
            ],
        ),
        (
            "etcdserverpb.PutRequest",
            vec![
                f("key", 1, Bytes),
                f("value", 2, Bytes),
                f("lease", 3, Int64),
                f("prev_kv", 4, Bool),
                f("ignore_value", 5, Bool),
                f("ignore_lease", 6, Bool),
            ],
        ),
        (
            "etcdserverpb.PutResponse",
            vec![msg("header", 1, HEADER), msg("prev_kv", 2, KV)],
        ),
        (
            "etcdserverpb.DeleteRangeRequest",
            vec![
                f("key", 1, Bytes),
                f("range_end", 2, Bytes),
                f("prev_kv", 3, Bool),
            ],
        ),
        (
            "etcdserverpb.DeleteRangeResponse",
            vec![
                msg("header", 1, HEADER),
                f("deleted", 2, Int64),
                rep(msg("prev_kvs", 3, KV)),
            ],
        ),
        (
            "etcdserverpb.RequestOp",
            vec![
                oneof("request", msg("request_range", 1, range)),
                oneof("request", msg("request_put", 2, "etcdserverpb.PutRequest")),
                oneof(
                    "request",
                    msg("request_delete_range", 3, "etcdserverpb.DeleteRangeRequest"),
                ),
                oneof("request", msg("request_txn", 4, "etcdserverpb.TxnRequest")),
            ],
        ),
        (
            "etcdserverpb.ResponseOp",
            vec![
                oneof(
                    "response",
                    msg("response_range", 1, "etcdserverpb.RangeResponse"),
                ),
                oneof(
                    "response",
                    msg("response_put", 2, "etcdserverpb.PutResponse"),
                ),
                oneof(
                    "response",
                    msg(
                        "response_delete_range",
                        3,
                        "etcdserverpb.DeleteRangeResponse",
                    ),
                ),
                oneof(
                    "response",
                    msg("response_txn", 4, "etcdserverpb.TxnResponse"),
                ),
            ],
        ),
        (
            "etcdserverpb.Compare",
            vec![
                en("result", 1, "etcdserverpb.Compare.CompareResult"),
                en("target", 2, "etcdserverpb.Compare.CompareTarget"),
                f("key", 3, Bytes),
                oneof("target_union", f("version", 4, Int64)),
                oneof("target_union", f("create_revision", 5, Int64)),
                oneof("target_union", f("mod_revision", 6, Int64)),
                oneof("target_union", f("value", 7, Bytes)),
                oneof("target_union", f("lease", 8, Int64)),
                f("range_end", 64, Bytes),
            ],
        ),
        (
            "etcdserverpb.TxnRequest",
            vec![
                rep(msg("compare", 1, "etcdserverpb.Compare")),
                rep(msg("success", 2, "etcdserverpb.RequestOp")),
                rep(msg("failure", 3, "etcdserverpb.RequestOp")),
            ],
        ),
        (
            "etcdserverpb.TxnResponse",
            vec![
                msg("header", 1, HEADER),
                f("succeeded", 2, Bool),
                rep(msg("responses", 3, "etcdserverpb.ResponseOp")),
            ],
        ),
        (
            "etcdserverpb.CompactionRequest",
            vec![f("revision", 1, Int64), f("physical", 2, Bool)],
        ),
        (
            "etcdserverpb.WatchRequest",
            vec![
                oneof(
                    "request_union",
                    msg("create_request", 1, "etcdserverpb.WatchCreateRequest"),
                ),
                oneof(
                    "request_union",
                    msg("cancel_request", 2, "etcdserverpb.WatchCancelRequest"),
                ),
                oneof(
                    "request_union",
                    msg("progress_request", 3, "etcdserverpb.WatchProgressRequest"),
                ),
            ],
        ),
        (
            "etcdserverpb.WatchCreateRequest",
            vec![
                f("key", 1, Bytes),
                f("range_end", 2, Bytes),
                f("start_revision", 3, Int64),
                f("progress_notify", 4, Bool),
                rep(en(
                    "filters",
                    5,
                    "etcdserverpb.WatchCreateRequest.FilterType",
                )),
                f("prev_kv", 6, Bool),
                f("watch_id", 7, Int64),
                f("fragment", 8, Bool),
            ],
        ),
        (
            "etcdserverpb.WatchCancelRequest",
            vec![f("watch_id", 1, Int64)],
        ),
        ("etcdserverpb.WatchProgressRequest", vec![]),
        (
            "etcdserverpb.WatchResponse",
            vec![
                msg("header", 1, HEADER),
                f("watch_id", 2, Int64),
                f("created", 3, Bool),
                f("canceled", 4, Bool),
                f("compact_revision", 5, Int64),
                f("cancel_reason", 6, Str),
                f("fragment", 7, Bool),
                rep(msg("events", 11, "mvccpb.Event")),
            ],
        ),
        (
            "etcdserverpb.LeaseGrantRequest",
            vec![f("TTL", 1, Int64), f("ID", 2, Int64)],
        ),
        (
            "etcdserverpb.LeaseGrantResponse",
            vec![
                msg("header", 1, HEADER),
                f("ID", 2, Int64),
                f("TTL", 3, Int64),
                f("error", 4, Str),
            ],
        ),
        (
            "etcdserverpb.LeaseKeepAliveRequest",
            vec![f("ID", 1, Int64)],
        ),
        (
            "etcdserverpb.LeaseKeepAliveResponse",
            vec![
                msg("header", 1, HEADER),
                f("ID", 2, Int64),
                f("TTL", 3, Int64),
            ],
        ),
        (
            "etcdserverpb.LeaseTimeToLiveRequest",
            vec![f("ID", 1, Int64), f("keys", 2, Bool)],
        ),
        (
            "etcdserverpb.LeaseTimeToLiveResponse",
            vec![
                msg("header", 1, HEADER),
                f("ID", 2, Int64),
                f("TTL", 3, Int64),
                f("grantedTTL", 4, Int64),
                rep(f("keys", 5, Bytes)),
            ],
        ),
        (
            "etcdserverpb.LeaseCheckpoint",
            vec![f("ID", 1, Int64), f("remaining_TTL", 2, Int64)],
        ),
        (
            "etcdserverpb.Member",
            vec![
                f("ID", 1, Uint64),
                f("name", 2, Str),
                rep(f("peerURLs", 3, Str)),
                rep(f("clientURLs", 4, Str)),
                f("isLearner", 5, Bool),
            ],
        ),
        (
            "etcdserverpb.MemberAddRequest",
            vec![rep(f("peerURLs", 1, Str)), f("isLearner", 2, Bool)],
        ),
        (
            "etcdserverpb.MemberAddResponse",
            vec![
                msg("header", 1, HEADER),
                msg("member", 2, "etcdserverpb.Member"),
                rep(msg("members", 3, "etcdserverpb.Member")),
            ],
        ),
        (
            "etcdserverpb.MemberListRequest",
            vec![f("linearizable", 1, Bool)],
        ),
        (
            "etcdserverpb.MemberPromoteRequest",
            vec![f("ID", 1, Uint64)],
        ),
        (
            "etcdserverpb.MoveLeaderRequest",
            vec![f("targetID", 1, Uint64)],
        ),
        (
            "etcdserverpb.StatusResponse",
            vec![
                msg("header", 1, HEADER),
                f("version", 2, Str),
                f("dbSize", 3, Int64),
                f("leader", 4, Uint64),
                f("raftIndex", 5, Uint64),
                f("raftTerm", 6, Uint64),
                f("raftAppliedIndex", 7, Uint64),
                rep(f("errors", 8, Str)),
                f("dbSizeInUse", 9, Int64),
                f("isLearner", 10, Bool),
                f("storageVersion", 11, Str),
                f("dbSizeQuota", 12, Int64),
                msg("downgradeInfo", 13, "etcdserverpb.DowngradeInfo"),
            ],
        ),
        (
            "etcdserverpb.AlarmRequest",
            vec![
                en("action", 1, "etcdserverpb.AlarmRequest.AlarmAction"),
                f("memberID", 2, Uint64),
                en("alarm", 3, "etcdserverpb.AlarmType"),
            ],
        ),
        (
            "etcdserverpb.HashKVResponse",
            vec![
                msg("header", 1, HEADER),
                f("hash", 2, Uint32),
                f("compact_revision", 3, Int64),
                f("hash_revision", 4, Int64),
            ],
        ),
        (
            "etcdserverpb.SnapshotResponse",
            vec![
                msg("header", 1, HEADER),
                f("remaining_bytes", 2, Uint64),
                f("blob", 3, Bytes),
                f("version", 4, Str),
            ],
        ),
        (
            "etcdserverpb.AuthUserAddRequest",
            vec![
                f("name", 1, Str),
                f("password", 2, Str),
                msg("options", 3, "authpb.UserAddOptions"),
                f("hashedPassword", 4, Str),
            ],
        ),
        (
            "etcdserverpb.AuthStatusResponse",
            vec![
                msg("header", 1, HEADER),
                f("enabled", 2, Bool),
                f("authRevision", 3, Uint64),
            ],
        ),
        (
            "etcdserverpb.AuthRoleGrantPermissionRequest",
            vec![f("name", 1, Str), msg("perm", 2, "authpb.Permission")],
        ),
        (
            "etcdserverpb.AuthRoleRevokePermissionRequest",
            vec![
                f("role", 1, Str),
                f("key", 2, Bytes),
                f("range_end", 3, Bytes),
            ],
        ),
        (
            KV,
            vec![
                f("key", 1, Bytes),
                f("create_revision", 2, Int64),
                f("mod_revision", 3, Int64),
                f("version", 4, Int64),
                f("value", 5, Bytes),
                f("lease", 6, Int64),
            ],
        ),
        (
            "mvccpb.Event",
            vec![
                en("type", 1, "mvccpb.Event.EventType"),
                msg("kv", 2, KV),
                msg("prev_kv", 3, KV),
            ],
        ),
        (
            "authpb.Permission",
            vec![
                en("permType", 1, "authpb.Permission.Type"),
                f("key", 2, Bytes),
                f("range_end", 3, Bytes),
            ],
        ),
        (
            "authpb.User",
            vec![
                f("name", 1, Bytes),
                f("password", 2, Bytes),
                rep(f("roles", 3, Str)),
                msg("options", 4, "authpb.UserAddOptions"),
            ],
        ),
        (
            "authpb.Role",
            vec![
                f("name", 1, Bytes),
                rep(msg("keyPermission", 2, "authpb.Permission")),
            ],
        ),
        (
            "v3lockpb.LockRequest",
            vec![f("name", 1, Bytes), f("lease", 2, Int64)],
        ),
        (
            "v3lockpb.LockResponse",
            vec![msg("header", 1, HEADER), f("key", 2, Bytes)],
        ),
        (
            "v3electionpb.CampaignRequest",
            vec![
                f("name", 1, Bytes),
                f("lease", 2, Int64),
                f("value", 3, Bytes),
            ],
        ),
        (
            "v3electionpb.LeaderKey",
            vec![
                f("name", 1, Bytes),
                f("key", 2, Bytes),
                f("rev", 3, Int64),
                f("lease", 4, Int64),
            ],
        ),
        (
            "v3electionpb.LeaderResponse",
            vec![msg("header", 1, HEADER), msg("kv", 2, KV)],
        ),
    ]
}

#[test]
fn key_messages_have_etcds_field_names_numbers_and_types() {
    // Goal: a message encoded by an etcd client decodes to the same fields here, and the other
    // way round. Method: compare every field of each tabled message (name, number, wire type,
    // repetition, message/enum type, oneof) with the table; collect all differences first so
    // one run reports them all.
    let index = Index::load();
    let mut differences = Vec::new();
    for (name, expected) in expected_fields() {
        let actual = actual_fields(index.message(name));
        if actual != expected {
            differences.push(format!(
                "{name}:\n  actual   {actual:?}\n  expected {expected:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[test]
fn enums_have_etcds_value_names_and_numbers() {
    // Goal: enum values mean the same on both ends. Method: compare each enum's (name, number)
    // list with the table.
    let index = Index::load();
    let expected: [(&str, &[(&str, i32)]); 10] = [
        (
            "etcdserverpb.RangeRequest.SortOrder",
            &[("NONE", 0), ("ASCEND", 1), ("DESCEND", 2)],
        ),
        (
            "etcdserverpb.RangeRequest.SortTarget",
            &[
                ("KEY", 0),
                ("VERSION", 1),
                ("CREATE", 2),
                ("MOD", 3),
                ("VALUE", 4),
            ],
        ),
        (
            "etcdserverpb.Compare.CompareResult",
            &[("EQUAL", 0), ("GREATER", 1), ("LESS", 2), ("NOT_EQUAL", 3)],
        ),
        (
            "etcdserverpb.Compare.CompareTarget",
            &[
                ("VERSION", 0),
                ("CREATE", 1),
                ("MOD", 2),
                ("VALUE", 3),
                ("LEASE", 4),
            ],
        ),
        (
            "etcdserverpb.WatchCreateRequest.FilterType",
            &[("NOPUT", 0), ("NODELETE", 1)],
        ),
        (
            "etcdserverpb.AlarmType",
            &[("NONE", 0), ("NOSPACE", 1), ("CORRUPT", 2)],
        ),
        (
            "etcdserverpb.AlarmRequest.AlarmAction",
            &[("GET", 0), ("ACTIVATE", 1), ("DEACTIVATE", 2)],
        ),
        (
            "etcdserverpb.DowngradeRequest.DowngradeAction",
            &[("VALIDATE", 0), ("ENABLE", 1), ("CANCEL", 2)],
        ),
        ("mvccpb.Event.EventType", &[("PUT", 0), ("DELETE", 1)]),
        (
            "authpb.Permission.Type",
            &[("READ", 0), ("WRITE", 1), ("READWRITE", 2)],
        ),
    ];
    for (name, values) in expected {
        let enumeration = index
            .enums
            .get(name)
            .unwrap_or_else(|| panic!("enum {name} missing"));
        let actual: Vec<(&str, i32)> = enumeration
            .value
            .iter()
            .map(|v| (v.name(), v.number()))
            .collect();
        assert_eq!(actual, values.to_vec(), "values of {name}");
    }
}

// -------------------------------------------------------------------------------------------------
// (c) Golden encodings
// -------------------------------------------------------------------------------------------------

/// Checks both directions: the struct encodes to `bytes`, and `bytes` decode to the struct.
fn assert_golden<M: prost::Message + Default + PartialEq + std::fmt::Debug>(
    value: &M,
    bytes: &[u8],
) {
    assert_eq!(value.encode_to_vec(), bytes, "encoding of {value:?}");
    assert_eq!(
        &M::decode(bytes).expect("golden bytes decode"),
        value,
        "decoding of golden bytes"
    );
}

#[test]
fn put_request_encodes_to_hand_computed_bytes() {
    // Goal: the generated encoder produces, byte for byte, what the protobuf rules and etcd's
    // field numbers demand. Method: compare with bytes derived by hand below.
    //
    // A field's key is (number << 3) | wire type, as a varint; wire type 0 is varint, 2 is
    // length-delimited. Fields are written in number order, and proto3 leaves out defaults.
    //   key   = 1, bytes  -> key (1 << 3) | 2 = 0x0a, length 3, "foo" = 66 6f 6f
    //   value = 2, bytes  -> key (2 << 3) | 2 = 0x12, length 3, "bar" = 62 61 72
    //   lease = 3, int64  -> key (3 << 3) | 0 = 0x18, varint 7 = 07
    //   prev_kv = 4, bool -> key (4 << 3) | 0 = 0x20, true = 01
    //   ignore_value, ignore_lease are false and so absent.
    let request = PutRequest {
        key: Bytes::from_static(b"foo"),
        value: Bytes::from_static(b"bar"),
        lease: 7,
        prev_kv: true,
        ..PutRequest::default()
    };
    let expected = [
        0x0a, 0x03, 0x66, 0x6f, 0x6f, // key = "foo"
        0x12, 0x03, 0x62, 0x61, 0x72, // value = "bar"
        0x18, 0x07, // lease = 7
        0x20, 0x01, // prev_kv = true
    ];
    assert_golden(&request, &expected);
}

#[test]
fn response_header_encodes_negative_revision_as_ten_byte_varint() {
    // Goal: revision is a plain int64 (two's complement varint), not a zigzag sint64, and the
    // ids are uint64 varints, as in etcd. Method: compare with bytes derived by hand below.
    //
    //   cluster_id = 1, uint64 -> key 0x08, 300 = 0b10_0101100 -> low 7 bits 0x2c | 0x80 = 0xac,
    //                             then 300 >> 7 = 2 -> 0x02
    //   member_id = 2, uint64  -> key 0x10, varint 1 = 01
    //   revision = 3, int64 -1 -> key 0x18, -1 as u64 is 2^64 - 1: nine bytes 0xff then 0x01
    //                             (a zigzag sint64 would have been the single byte 0x01)
    //   raft_term = 4, uint64  -> key 0x20, varint 5 = 05
    let header = ResponseHeader {
        cluster_id: 300,
        member_id: 1,
        revision: -1,
        raft_term: 5,
    };
    let expected = [
        0x08, 0xac, 0x02, // cluster_id = 300
        0x10, 0x01, // member_id = 1
        0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // revision = -1
        0x20, 0x05, // raft_term = 5
    ];
    assert_golden(&header, &expected);
}

#[test]
fn compare_encodes_oneof_member_and_field_64() {
    // Goal: the target_union member carries its own field number, and range_end sits at 64,
    // whose key needs two varint bytes. Method: compare with bytes derived by hand below.
    //
    //   result = 1, NOT_EQUAL = 3 -> key 0x08, 03
    //   target = 2, MOD = 2       -> key 0x10, 02
    //   key = 3, bytes "k"        -> key (3 << 3) | 2 = 0x1a, length 1, 6b
    //   mod_revision = 6, int64 5 -> key (6 << 3) | 0 = 0x30, 05
    //   range_end = 64, bytes "z" -> key (64 << 3) | 2 = 514 = 0b100_0000010
    //                                -> 0x02 | 0x80 = 0x82, then 514 >> 7 = 4 -> 0x04;
    //                                length 1, 7a
    let compare = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Mod as i32,
        key: Bytes::from_static(b"k"),
        range_end: Bytes::from_static(b"z"),
        target_union: Some(compare::TargetUnion::ModRevision(5)),
    };
    let expected = [
        0x08, 0x03, // result = NOT_EQUAL
        0x10, 0x02, // target = MOD
        0x1a, 0x01, 0x6b, // key = "k"
        0x30, 0x05, // mod_revision = 5
        0x82, 0x04, 0x01, 0x7a, // range_end = "z"
    ];
    assert_golden(&compare, &expected);
}

#[test]
fn watch_event_nests_key_value_at_etcds_numbers() {
    // Goal: nested messages (WatchResponse -> Event -> KeyValue) use etcd's numbers all the way
    // down. Method: compare with bytes derived by hand below.
    //
    //   KeyValue{key "a", mod_revision 2}: 0a 01 61 (key), 18 02 (mod_revision = 3 -> 0x18)
    //                                      = 5 bytes
    //   Event{type DELETE, kv}: 08 01 (type = 1), 12 05 <kv> (kv = 2, length 5) = 9 bytes
    //   WatchResponse{watch_id 1, events [event]}: 10 01 (watch_id = 2),
    //       events = 11 -> key (11 << 3) | 2 = 0x5a, length 9, <event>
    let response = etcdserverpb::WatchResponse {
        watch_id: 1,
        events: vec![mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: Bytes::from_static(b"a"),
                mod_revision: 2,
                ..mvccpb::KeyValue::default()
            }),
            prev_kv: None,
        }],
        ..etcdserverpb::WatchResponse::default()
    };
    let expected = [
        0x10, 0x01, // watch_id = 1
        0x5a, 0x09, // events[0], 9 bytes
        0x08, 0x01, // type = DELETE
        0x12, 0x05, // kv, 5 bytes
        0x0a, 0x01, 0x61, // key = "a"
        0x18, 0x02, // mod_revision = 2
    ];
    assert_golden(&response, &expected);
}

// -------------------------------------------------------------------------------------------------
// (d) Peer protocol
// -------------------------------------------------------------------------------------------------

fn raft_message(to: u64, body: Body) -> peer::Message {
    peer::Message {
        group_id: 7,
        from: 1,
        to,
        term: 3,
        body: Some(body),
    }
}

fn conf_state() -> peer::ConfState {
    peer::ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        voters_outgoing: vec![1, 2],
        learners_next: vec![5],
        auto_leave: true,
    }
}

fn entries() -> Vec<peer::Entry> {
    use peer::conf_change_single::Change;
    use peer::entry::Payload;
    let conf_change = peer::ConfChange {
        transition: peer::ConfChangeTransition::JointExplicit as i32,
        changes: vec![
            peer::ConfChangeSingle {
                change: Some(Change::AddVoter(4)),
            },
            peer::ConfChangeSingle {
                change: Some(Change::AddLearner(5)),
            },
            peer::ConfChangeSingle {
                change: Some(Change::RemoveNode(2)),
            },
        ],
        context: Bytes::from_static(b"http://10.0.0.4:2380"),
    };
    vec![
        // The empty entry of a new leader: the payload must stay present on the wire.
        peer::Entry {
            term: 3,
            index: 10,
            payload: Some(Payload::Normal(Bytes::new())),
        },
        peer::Entry {
            term: 3,
            index: 11,
            payload: Some(Payload::Normal(Bytes::from_static(b"x"))),
        },
        peer::Entry {
            term: 3,
            index: 12,
            payload: Some(Payload::ConfChange(conf_change)),
        },
    ]
}

/// One message of every kind the Raft core sends.
fn every_message_kind() -> Vec<peer::Message> {
    let snapshot = peer::Snapshot {
        meta: Some(peer::SnapshotMeta {
            index: 9,
            term: 2,
            conf_state: Some(conf_state()),
        }),
        data: Bytes::from_static(b"state machine image"),
    };
    let context = || Bytes::from_static(b"read-1");
    vec![
        raft_message(
            2,
            Body::PreVote(peer::PreVote {
                last_index: 9,
                last_term: 2,
            }),
        ),
        raft_message(
            2,
            Body::PreVoteResponse(peer::PreVoteResponse { reject: true }),
        ),
        raft_message(
            2,
            Body::Vote(peer::Vote {
                last_index: 9,
                last_term: 2,
                leader_transfer: true,
            }),
        ),
        raft_message(2, Body::VoteResponse(peer::VoteResponse { reject: false })),
        raft_message(
            2,
            Body::Append(peer::Append {
                prev_index: 9,
                prev_term: 2,
                entries: entries(),
                commit: 9,
            }),
        ),
        raft_message(
            3,
            Body::AppendResponse(peer::AppendResponse {
                index: 9,
                reject: true,
                reject_hint: 5,
                hint_term: 1,
            }),
        ),
        raft_message(
            3,
            Body::Heartbeat(peer::Heartbeat {
                commit: 9,
                context: context(),
            }),
        ),
        raft_message(
            3,
            Body::HeartbeatResponse(peer::HeartbeatResponse { context: context() }),
        ),
        raft_message(3, Body::Snapshot(snapshot)),
        raft_message(3, Body::TimeoutNow(peer::TimeoutNow {})),
        raft_message(3, Body::ReadIndex(peer::ReadIndex { context: context() })),
        raft_message(
            3,
            Body::ReadIndexResponse(peer::ReadIndexResponse {
                index: 12,
                context: context(),
                reject: false,
            }),
        ),
    ]
}

#[test]
fn peer_message_batch_round_trips() {
    // Goal: a batch of Raft messages of every kind survives encoding and decoding unchanged,
    // including an entry whose payload is empty and a joint configuration. Method: encode a
    // batch, decode it, compare with the original; then check that the decoded batch still
    // holds one message of each of the twelve kinds, in order.
    let batch = peer::MessageBatch {
        messages: every_message_kind(),
    };
    let bytes = batch.encode_to_vec();
    let decoded = peer::MessageBatch::decode(bytes.as_slice()).expect("batch decodes");
    assert_eq!(decoded, batch);

    let kinds: Vec<u32> = decoded.messages.iter().map(body_field_number).collect();
    assert_eq!(kinds, (10..=21).collect::<Vec<u32>>());
    let Some(Body::Append(append)) = &decoded.messages[4].body else {
        panic!("message 4 is an Append");
    };
    assert_eq!(
        append.entries[0].payload,
        Some(peer::entry::Payload::Normal(Bytes::new()))
    );
}

/// The field number of the message's body, as declared in peer.proto.
fn body_field_number(message: &peer::Message) -> u32 {
    match message
        .body
        .as_ref()
        .expect("decoded messages keep their body")
    {
        Body::PreVote(_) => 10,
        Body::PreVoteResponse(_) => 11,
        Body::Vote(_) => 12,
        Body::VoteResponse(_) => 13,
        Body::Append(_) => 14,
        Body::AppendResponse(_) => 15,
        Body::Heartbeat(_) => 16,
        Body::HeartbeatResponse(_) => 17,
        Body::Snapshot(_) => 18,
        Body::TimeoutNow(_) => 19,
        Body::ReadIndex(_) => 20,
        Body::ReadIndexResponse(_) => 21,
    }
}

#[test]
fn peer_snapshot_chunk_round_trips() {
    // Goal: the first chunk of a snapshot stream, which carries the sender, the Raft message and
    // the total size, survives encoding. Method: encode, decode, compare.
    let header = raft_message(
        3,
        Body::Snapshot(peer::Snapshot {
            meta: Some(peer::SnapshotMeta {
                index: 9,
                term: 2,
                conf_state: Some(conf_state()),
            }),
            data: Bytes::new(),
        }),
    );
    let chunk = peer::SnapshotChunk {
        from: Some(peer::PeerIdentity {
            cluster_id: 42,
            member_id: 1,
            protocol_version: 1,
        }),
        message: Some(header),
        data_bytes: 1 << 40,
        offset: 0,
        data: Bytes::from(vec![0xab; 1024]),
        last: false,
        data_crc32c: 0,
    };
    let decoded = peer::SnapshotChunk::decode(chunk.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, chunk);
}

#[test]
fn truncated_peer_frame_is_an_error() {
    // Goal: bytes from the network that end early are reported as an error, never a panic or a
    // silently shorter batch (DESIGN.md: a malformed frame is an error). Method: decode every
    // proper prefix of an encoded batch that cuts inside a message; each must fail.
    let batch = peer::MessageBatch {
        messages: every_message_kind(),
    };
    let bytes = batch.encode_to_vec();
    let boundaries = message_boundaries(&batch);
    let mut failures = 0;
    for cut in 1..bytes.len() {
        let result = peer::MessageBatch::decode(&bytes[..cut]);
        if boundaries.contains(&cut) {
            // Cutting between two messages yields a valid, shorter batch: protobuf has no
            // length prefix for the whole message. The transport's framing (gRPC) supplies it.
            assert!(result.is_ok(), "cut at a message boundary {cut} decodes");
        } else {
            assert!(result.is_err(), "cut at {cut} of {} must fail", bytes.len());
            failures += 1;
        }
    }
    assert!(failures > 0);
}

/// The byte offsets at which each top-level `messages` field of the batch ends.
fn message_boundaries(batch: &peer::MessageBatch) -> BTreeSet<usize> {
    let mut offset = 0;
    let mut boundaries = BTreeSet::new();
    for message in &batch.messages {
        let wrapped = peer::MessageBatch {
            messages: vec![message.clone()],
        };
        offset += wrapped.encoded_len();
        boundaries.insert(offset);
    }
    boundaries
}
