//! Differential test: the same operations against real etcd 3.4 and against Chorus, compared
//! field by field.
//!
//! Each operation's answer is the whole protobuf response (revisions, create/mod revisions,
//! versions, values, txn flags and nested responses, prev_kvs, counts, `more`) or the gRPC
//! error's code and message. Only the ids differ by design and are cleared first: cluster_id,
//! member_id and raft_term in every header. The first divergence fails the test and is printed
//! with the operation, its position and both answers.
//!
//! The sequence is a fixed script of edge cases followed by a seeded random sequence
//! (`COMPAT_SEED`, default 1..=3, `COMPAT_OPS` operations each, default 300). A failing seed is
//! replayed with `COMPAT_SEED=<seed>`.

use chorus_compat::{Cluster, Flavor};
use etcd_client::proto::{PbResponseOp, PbTxnOpResponse};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp,
};

/// Both servers start with these limits so that the limit errors are cheap to reach.
const LIMITS: &[&str] = &["--max-txn-ops=16", "--max-request-bytes=65536"];
const TXN_OPS_MAX: usize = 16;

/// One operation of the sequence, in a form that prints readably.
#[derive(Clone, Debug)]
enum Op {
    Put {
        key: String,
        value: String,
        prev_kv: bool,
        ignore_value: bool,
    },
    Get(Get),
    Delete {
        key: String,
        range_end: Option<String>,
        prev_kv: bool,
    },
    Txn(TxnSpec),
    Compact {
        revision: i64,
    },
    /// A value of this many bytes (over the request limit when large enough).
    PutLarge {
        key: String,
        bytes: usize,
    },
}

#[derive(Clone, Debug)]
struct Get {
    key: String,
    range_end: Option<String>,
    limit: i64,
    revision: i64,
    sort: Option<(SortTarget, SortOrder)>,
    count_only: bool,
    keys_only: bool,
    min_mod_revision: i64,
    max_create_revision: i64,
}

#[derive(Clone, Debug)]
struct TxnSpec {
    compares: Vec<Cmp>,
    success: Vec<TxnStep>,
    failure: Vec<TxnStep>,
}

#[derive(Clone, Debug)]
enum Cmp {
    Value(String, CompareOp, String),
    Version(String, CompareOp, i64),
    Create(String, CompareOp, i64),
    Mod(String, CompareOp, i64),
    /// A compare over a prefix range.
    VersionPrefix(String, CompareOp, i64),
}

#[derive(Clone, Debug)]
enum TxnStep {
    Put(String, String, bool),
    Get(Get),
    Delete(String, Option<String>, bool),
    Txn(TxnSpec),
}

/// The comparable answer to one operation: the normalised response, or (code, message).
type Answer = Result<String, (String, String)>;

fn get_options(g: &Get) -> GetOptions {
    let mut o = GetOptions::new();
    if let Some(end) = &g.range_end {
        o = o.with_range(end.clone());
    }
    if g.limit > 0 {
        o = o.with_limit(g.limit);
    }
    if g.revision != 0 {
        o = o.with_revision(g.revision);
    }
    if let Some((target, order)) = g.sort {
        o = o.with_sort(target, order);
    }
    if g.count_only {
        o = o.with_count_only();
    }
    if g.keys_only {
        o = o.with_keys_only();
    }
    if g.min_mod_revision != 0 {
        o = o.with_min_mod_revision(g.min_mod_revision);
    }
    if g.max_create_revision != 0 {
        o = o.with_max_create_revision(g.max_create_revision);
    }
    o
}

fn put_options(prev_kv: bool, ignore_value: bool) -> Option<PutOptions> {
    let mut o = PutOptions::new();
    if prev_kv {
        o = o.with_prev_key();
    }
    if ignore_value {
        o = o.with_ignore_value();
    }
    Some(o)
}

fn delete_options(range_end: &Option<String>, prev_kv: bool) -> Option<DeleteOptions> {
    let mut o = DeleteOptions::new();
    if let Some(end) = range_end {
        o = o.with_range(end.clone());
    }
    if prev_kv {
        o = o.with_prev_key();
    }
    Some(o)
}

fn compare(c: &Cmp) -> Compare {
    match c {
        Cmp::Value(k, op, v) => Compare::value(k.clone(), *op, v.clone()),
        Cmp::Version(k, op, n) => Compare::version(k.clone(), *op, *n),
        Cmp::Create(k, op, n) => Compare::create_revision(k.clone(), *op, *n),
        Cmp::Mod(k, op, n) => Compare::mod_revision(k.clone(), *op, *n),
        Cmp::VersionPrefix(k, op, n) => Compare::version(k.clone(), *op, *n).with_prefix(),
    }
}

fn txn(spec: &TxnSpec) -> Txn {
    let step = |s: &TxnStep| match s {
        TxnStep::Put(k, v, prev) => TxnOp::put(k.clone(), v.clone(), put_options(*prev, false)),
        TxnStep::Get(g) => TxnOp::get(g.key.clone(), Some(get_options(g))),
        TxnStep::Delete(k, end, prev) => TxnOp::delete(k.clone(), delete_options(end, *prev)),
        TxnStep::Txn(inner) => TxnOp::txn(txn(inner)),
    };
    Txn::new()
        .when(spec.compares.iter().map(compare).collect::<Vec<_>>())
        .and_then(spec.success.iter().map(step).collect::<Vec<_>>())
        .or_else(spec.failure.iter().map(step).collect::<Vec<_>>())
}

/// Clears what differs by design: the ids and the term in a header.
fn clear_ids(header: &mut Option<etcd_client::proto::PbResponseHeader>) {
    if let Some(h) = header {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn clear_txn_ids(responses: &mut [PbResponseOp]) {
    for r in responses {
        match &mut r.response {
            Some(PbTxnOpResponse::ResponseRange(x)) => clear_ids(&mut x.header),
            Some(PbTxnOpResponse::ResponsePut(x)) => clear_ids(&mut x.header),
            Some(PbTxnOpResponse::ResponseDeleteRange(x)) => clear_ids(&mut x.header),
            Some(PbTxnOpResponse::ResponseTxn(x)) => {
                clear_ids(&mut x.header);
                clear_txn_ids(&mut x.responses);
            }
            None => {}
        }
    }
}

fn answer<T>(result: Result<T, etcd_client::Error>, show: impl FnOnce(T) -> String) -> Answer {
    match result {
        Ok(value) => Ok(show(value)),
        Err(etcd_client::Error::GRpcStatus(s)) => {
            Err((format!("{:?}", s.code()), s.message().to_string()))
        }
        Err(other) => Err(("client".to_string(), other.to_string())),
    }
}

async fn apply(c: &mut Client, op: &Op) -> Answer {
    match op {
        Op::Put {
            key,
            value,
            prev_kv,
            ignore_value,
        } => answer(
            c.put(
                key.clone(),
                value.clone(),
                put_options(*prev_kv, *ignore_value),
            )
            .await,
            |mut r| {
                clear_ids(&mut r.0.header);
                format!("{:#?}", r.0)
            },
        ),
        Op::PutLarge { key, bytes } => answer(
            c.put(key.clone(), vec![b'L'; *bytes], None).await,
            |mut r| {
                clear_ids(&mut r.0.header);
                format!("{:#?}", r.0)
            },
        ),
        Op::Get(g) => answer(c.get(g.key.clone(), Some(get_options(g))).await, |mut r| {
            clear_ids(&mut r.0.header);
            format!("{:#?}", r.0)
        }),
        Op::Delete {
            key,
            range_end,
            prev_kv,
        } => answer(
            c.delete(key.clone(), delete_options(range_end, *prev_kv))
                .await,
            |mut r| {
                clear_ids(&mut r.0.header);
                format!("{:#?}", r.0)
            },
        ),
        Op::Txn(spec) => answer(c.txn(txn(spec)).await, |mut r| {
            clear_ids(&mut r.0.header);
            clear_txn_ids(&mut r.0.responses);
            format!("{:#?}", r.0)
        }),
        Op::Compact { revision } => answer(
            c.compact(*revision, Some(CompactionOptions::new().with_physical()))
                .await,
            |mut r| {
                clear_ids(&mut r.0.header);
                format!("{:#?}", r.0)
            },
        ),
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        prev_kv: true,
        ignore_value: false,
    }
}

fn get(key: &str, range_end: Option<&str>) -> Get {
    Get {
        key: key.into(),
        range_end: range_end.map(Into::into),
        limit: 0,
        revision: 0,
        sort: None,
        count_only: false,
        keys_only: false,
        min_mod_revision: 0,
        max_create_revision: 0,
    }
}

/// Edge cases chosen by hand; revisions assume both servers start empty at revision 1.
fn script() -> Vec<Op> {
    let mut ops = vec![
        Op::Get(get("a", None)),
        put("a", "1"),
        put("a", "2"),
        put("b", "1"),
        put("c/1", "x"),
        put("c/2", "y"),
        Op::Get(get("", Some("\0"))),
        Op::Get(get("c/", Some("c0"))),
        Op::Get(Get {
            limit: 1,
            ..get("a", Some("z"))
        }),
        Op::Get(Get {
            revision: 2,
            ..get("a", None)
        }),
        Op::Get(Get {
            revision: 100,
            ..get("a", None)
        }),
        Op::Get(Get {
            sort: Some((SortTarget::Version, SortOrder::Descend)),
            ..get("a", Some("z"))
        }),
        Op::Get(Get {
            sort: Some((SortTarget::Value, SortOrder::Ascend)),
            count_only: true,
            ..get("a", Some("z"))
        }),
        Op::Get(Get {
            keys_only: true,
            min_mod_revision: 4,
            ..get("a", Some("z"))
        }),
        Op::Get(get("z", Some("a"))),
        Op::Put {
            key: "a".into(),
            value: String::new(),
            prev_kv: true,
            ignore_value: true,
        },
        Op::Put {
            key: "new".into(),
            value: String::new(),
            prev_kv: false,
            ignore_value: true,
        },
        Op::Put {
            key: String::new(),
            value: "v".into(),
            prev_kv: false,
            ignore_value: false,
        },
        Op::Get(get("", None)),
        Op::Delete {
            key: "c/".into(),
            range_end: Some("c0".into()),
            prev_kv: true,
        },
        Op::Delete {
            key: "nothing".into(),
            range_end: None,
            prev_kv: true,
        },
        Op::Txn(TxnSpec {
            compares: vec![
                Cmp::Value("a".into(), CompareOp::Equal, "2".into()),
                Cmp::Version("a".into(), CompareOp::Greater, 1),
                Cmp::Create("missing".into(), CompareOp::Equal, 0),
            ],
            success: vec![
                TxnStep::Put("a".into(), "3".into(), true),
                TxnStep::Get(get("a", None)),
                TxnStep::Delete("b".into(), None, true),
            ],
            failure: vec![TxnStep::Get(get("b", None))],
        }),
        Op::Txn(TxnSpec {
            compares: vec![Cmp::Mod("a".into(), CompareOp::Less, 2)],
            success: vec![],
            failure: vec![
                TxnStep::Get(get("a", Some("z"))),
                TxnStep::Txn(TxnSpec {
                    compares: vec![Cmp::VersionPrefix("a".into(), CompareOp::Greater, 0)],
                    success: vec![TxnStep::Put("n1".into(), "v".into(), false)],
                    failure: vec![],
                }),
                TxnStep::Put("n2".into(), "v".into(), false),
            ],
        }),
        Op::Txn(TxnSpec {
            compares: vec![],
            success: vec![
                TxnStep::Put("dup".into(), "1".into(), false),
                TxnStep::Put("dup".into(), "2".into(), false),
            ],
            failure: vec![],
        }),
        Op::Txn(TxnSpec {
            compares: vec![],
            success: vec![
                TxnStep::Put("p".into(), "1".into(), false),
                TxnStep::Delete("a".into(), Some("z".into()), false),
            ],
            failure: vec![],
        }),
        Op::Txn(TxnSpec {
            compares: vec![],
            success: (0..=TXN_OPS_MAX)
                .map(|i| TxnStep::Put(format!("many{i}"), "v".into(), false))
                .collect(),
            failure: vec![],
        }),
        Op::Txn(TxnSpec {
            compares: vec![],
            success: vec![],
            failure: vec![],
        }),
        Op::PutLarge {
            key: "large".into(),
            bytes: 70_000,
        },
        Op::Compact { revision: 4 },
        Op::Get(Get {
            revision: 3,
            ..get("a", None)
        }),
        Op::Get(Get {
            revision: 4,
            ..get("a", Some("z"))
        }),
        Op::Compact { revision: 4 },
        Op::Compact { revision: 3 },
        Op::Compact { revision: 1000 },
    ];
    ops.push(Op::Get(get("", Some("\0"))));
    ops
}

/// A small deterministic generator (SplitMix64), so that a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: &[&str] = &["a", "b", "c", "d/1", "d/2", "d/3", "e", "f"];

/// What the generator knows of the servers' state, to aim revisions near interesting values.
struct Gen {
    rng: Rng,
    revision: i64,
    compacted: i64,
}

impl Gen {
    fn key(&mut self) -> String {
        self.rng.pick(KEYS).to_string()
    }
    fn range_end(&mut self, key: &str) -> Option<String> {
        match self.rng.below(5) {
            0 => Some("\0".into()),
            1 => Some(format!("{key}\u{7f}")),
            2 => Some(self.key()),
            _ => None,
        }
    }
    fn op_cmp(&mut self) -> CompareOp {
        *self.rng.pick(&[
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Less,
            CompareOp::Greater,
        ])
    }
    fn revision_near(&mut self) -> i64 {
        let low = (self.compacted - 2).max(0);
        let high = self.revision + 2;
        low + self.rng.below((high - low + 1) as u64) as i64
    }
    fn get(&mut self) -> Get {
        let key = self.key();
        let sorts = [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
        ];
        let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
        Get {
            range_end: self.range_end(&key),
            key,
            limit: if self.rng.chance(30) {
                self.rng.below(3) as i64 + 1
            } else {
                0
            },
            revision: if self.rng.chance(30) {
                self.revision_near()
            } else {
                0
            },
            sort: if self.rng.chance(30) {
                Some((*self.rng.pick(&sorts), *self.rng.pick(&orders)))
            } else {
                None
            },
            count_only: self.rng.chance(10),
            keys_only: self.rng.chance(10),
            min_mod_revision: if self.rng.chance(10) {
                self.revision_near()
            } else {
                0
            },
            max_create_revision: if self.rng.chance(10) {
                self.revision_near()
            } else {
                0
            },
        }
    }
    fn value(&mut self) -> String {
        format!("v{}", self.rng.below(4))
    }
    fn cmp(&mut self) -> Cmp {
        let key = self.key();
        let op = self.op_cmp();
        match self.rng.below(5) {
            0 => Cmp::Value(key, op, self.value()),
            1 => Cmp::Version(key, op, self.rng.below(4) as i64),
            2 => Cmp::Create(key, op, self.revision_near()),
            3 => Cmp::Mod(key, op, self.revision_near()),
            _ => Cmp::VersionPrefix("d/".into(), op, self.rng.below(4) as i64),
        }
    }
    fn step(&mut self, depth: u32) -> TxnStep {
        match self.rng.below(if depth < 2 { 7 } else { 6 }) {
            0 | 1 => {
                let (k, v) = (self.key(), self.value());
                TxnStep::Put(k, v, self.rng.chance(50))
            }
            2 | 3 => TxnStep::Get(self.get()),
            4 | 5 => {
                let k = self.key();
                let end = if self.rng.chance(30) {
                    self.range_end(&k)
                } else {
                    None
                };
                TxnStep::Delete(k, end, self.rng.chance(50))
            }
            _ => TxnStep::Txn(self.txn(depth + 1)),
        }
    }
    fn txn(&mut self, depth: u32) -> TxnSpec {
        let compares = (0..self.rng.below(3)).map(|_| self.cmp()).collect();
        let success = (0..self.rng.below(4)).map(|_| self.step(depth)).collect();
        let failure = (0..self.rng.below(3)).map(|_| self.step(depth)).collect();
        TxnSpec {
            compares,
            success,
            failure,
        }
    }
    fn op(&mut self) -> Op {
        match self.rng.below(100) {
            0..=29 => {
                let (key, value) = (self.key(), self.value());
                Op::Put {
                    key,
                    value,
                    prev_kv: self.rng.chance(50),
                    ignore_value: self.rng.chance(5),
                }
            }
            30..=54 => Op::Get(self.get()),
            55..=67 => {
                let key = self.key();
                let range_end = if self.rng.chance(50) {
                    self.range_end(&key)
                } else {
                    None
                };
                Op::Delete {
                    key,
                    range_end,
                    prev_kv: self.rng.chance(50),
                }
            }
            68..=94 => Op::Txn(self.txn(0)),
            95..=97 => Op::Compact {
                revision: self.revision_near(),
            },
            _ => {
                if self.rng.chance(50) {
                    Op::Put {
                        key: String::new(),
                        value: "v".into(),
                        prev_kv: false,
                        ignore_value: false,
                    }
                } else {
                    Op::PutLarge {
                        key: self.key(),
                        bytes: 70_000,
                    }
                }
            }
        }
    }
}

/// The revision after an answer (read from the normalised text of a successful response).
fn header_revision(answer: &Answer) -> Option<i64> {
    let text = answer.as_ref().ok()?;
    let at = text.find("revision: ")?;
    let rest = &text[at + "revision: ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

struct Pair {
    etcd: Cluster,
    chorus: Cluster,
    etcd_client: Client,
    chorus_client: Client,
}

impl Pair {
    async fn start() -> Pair {
        let etcd = Cluster::start(Flavor::Etcd, 1, LIMITS).await;
        let chorus = Cluster::start(Flavor::Chorus, 1, LIMITS).await;
        let etcd_client = etcd.client().await;
        let chorus_client = chorus.client().await;
        Pair {
            etcd,
            chorus,
            etcd_client,
            chorus_client,
        }
    }

    /// Applies `op` to both; panics with both answers at the first divergence.
    async fn check(&mut self, label: &str, index: usize, op: &Op) -> Answer {
        let want = apply(&mut self.etcd_client, op).await;
        let got = apply(&mut self.chorus_client, op).await;
        if want != got {
            panic!(
                "DIVERGENCE at {label} op #{index}\n\
                 operation: {op:#?}\n\
                 --- etcd 3.4 answered:\n{}\n--- chorus answered:\n{}\n\
                 (servers: etcd {:?}, chorus {:?})",
                show(&want),
                show(&got),
                self.etcd.endpoints(),
                self.chorus.endpoints()
            );
        }
        want
    }
}

fn show(answer: &Answer) -> String {
    match answer {
        Ok(text) => text.clone(),
        Err((code, message)) => format!("error {code}: {message}"),
    }
}

#[tokio::test]
async fn fixed_script_answers_as_etcd_does() {
    // Goal: hand-picked edge cases of KV answer exactly as etcd 3.4 answers them.
    // Method: run the script against both servers, compare every answer.
    let mut pair = Pair::start().await;
    for (i, op) in script().iter().enumerate() {
        let _ = pair.check("script", i, op).await;
    }
}

#[tokio::test]
async fn seeded_random_operations_answer_as_etcd_does() {
    // Goal: random sequences of puts, range deletes, txns with compares, reads at revisions,
    // compactions and bad requests answer exactly as etcd 3.4 answers them.
    // Method: for each seed, fresh servers, the same generated sequence to both, compare.
    let ops: usize = std::env::var("COMPAT_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seeds: Vec<u64> = match std::env::var("COMPAT_SEED") {
        Ok(s) => vec![s.parse().expect("COMPAT_SEED is a number")],
        // 15 and 24 once found a divergence: etcd accepts a compaction at revision 0 once.
        Err(_) => vec![1, 2, 3, 15, 24],
    };
    for seed in seeds {
        let mut pair = Pair::start().await;
        let mut generator = Gen {
            rng: Rng(seed),
            revision: 1,
            compacted: 0,
        };
        let label = format!("seed {seed}");
        for i in 0..ops {
            let op = generator.op();
            let answer = pair.check(&label, i, &op).await;
            if let Some(r) = header_revision(&answer) {
                generator.revision = r;
            }
            if let (Op::Compact { revision }, Ok(_)) = (&op, &answer) {
                generator.compacted = *revision;
            }
        }
    }
}
