//! The client commands of `chorus`, for people without etcdctl: KV, watch, lease, member and
//! endpoint status, and the coordination recipes of `chorus-client` (lock, elect, service).
//!
//! Every command takes `--endpoints` (comma-separated, or `CHORUS_ENDPOINTS`; default
//! `http://127.0.0.1:2379`). Output follows etcdctl's simple format where etcdctl has the same
//! command. Long-running commands (`watch`, `lock` without a command, `elect`, `service
//! register`, `service watch`, `lease keep-alive`) stop on Ctrl-C or SIGTERM; `lock` and
//! `elect` then give up what they hold.

use anyhow::{Context as _, bail};
use chorus_client::balance::PolicyKind;
use chorus_client::proto as pb;
use chorus_client::recipes::election::Election;
use chorus_client::recipes::lock::Mutex;
use chorus_client::recipes::registry::{Discovery, Registration};
use chorus_client::txn::{Cmp, Compare, Op, Txn};
use chorus_client::{
    Client, ClientOptions, DeleteOptions, GetOptions, Kind, PutOptions, WatchOptions,
};
use clap::{Args, Subcommand};

/// Where the client commands connect.
#[derive(Args, Debug, Clone)]
pub struct Endpoints {
    /// Client URLs of the cluster, comma-separated [env: CHORUS_ENDPOINTS]
    /// [default: http://127.0.0.1:2379]
    #[arg(long, global = true)]
    endpoints: Option<String>,
}

impl Endpoints {
    fn urls(&self) -> Vec<String> {
        let given = self
            .endpoints
            .clone()
            .or_else(|| std::env::var("CHORUS_ENDPOINTS").ok())
            .unwrap_or_else(|| "http://127.0.0.1:2379".to_string());
        given
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_string()
                } else {
                    format!("http://{s}")
                }
            })
            .collect()
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let urls = self.urls();
        Client::connect(urls.clone(), ClientOptions::default())
            .await
            .with_context(|| format!("connect to {}", urls.join(",")))
    }
}

#[derive(Args, Debug)]
pub struct PutArgs {
    key: String,
    value: String,
    /// Attach the key to this lease (hexadecimal, as `lease grant` prints it)
    #[arg(long)]
    lease: Option<String>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    key: String,
    /// Every key with this prefix
    #[arg(long)]
    prefix: bool,
    /// Read at this revision
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// At most this many keys
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Keys only
    #[arg(long)]
    keys_only: bool,
    /// Serve the read from the member asked (serializable)
    #[arg(long)]
    serializable: bool,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    key: String,
    /// Every key with this prefix
    #[arg(long)]
    prefix: bool,
}

#[derive(Args, Debug)]
pub struct TxnArgs {
    /// A comparison `KEY = VALUE`, `KEY != VALUE`, `KEY > VALUE` or `KEY < VALUE` on the value
    /// (repeatable; all must hold)
    #[arg(long = "if")]
    compares: Vec<String>,
    /// An operation when they hold: `put KEY VALUE`, `get KEY` or `del KEY` (repeatable)
    #[arg(long = "then")]
    then: Vec<String>,
    /// An operation when they do not (repeatable)
    #[arg(long = "else")]
    otherwise: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    key: String,
    /// Every key with this prefix
    #[arg(long)]
    prefix: bool,
    /// Start from this revision (history first)
    #[arg(long, default_value_t = 0)]
    rev: i64,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds
    Grant { ttl: i64 },
    /// Revoke a lease (its keys are deleted)
    Revoke { id: String },
    /// Time left on a lease, with its keys
    Timetolive { id: String },
    /// Renew a lease until stopped
    KeepAlive { id: String },
    /// List the leases
    List,
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members
    List,
    /// Add a member with these peer URLs (comma-separated)
    Add {
        name: String,
        #[arg(long)]
        peer_urls: String,
        /// Add it as a learner
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hexadecimal id)
    Remove { id: String },
    /// Promote a learner (hexadecimal id)
    Promote { id: String },
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Status of each endpoint
    Status,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock's name
    name: String,
    /// Lease TTL in seconds: how long the lock outlives this process if it dies
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// A command to run while holding the lock; it gets CHORUS_LOCK_KEY and
    /// CHORUS_FENCING_TOKEN. Without one, the lock is held until Ctrl-C.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// The election's name
    name: String,
    /// Campaign with this value and lead until Ctrl-C; without it, print each new leader
    proposal: Option<String>,
    /// Lease TTL in seconds: how soon another candidate leads if this process dies
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Register an instance (until Ctrl-C; it disappears within TTL if the process dies)
    Register {
        service: String,
        id: String,
        value: String,
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
    /// List the instances of a service
    List { service: String },
    /// Print the instances of a service each time they change
    Watch { service: String },
    /// Pick one instance with a load-balancing policy: round-robin, random, power-of-two,
    /// consistent-hash (with --key)
    Pick {
        service: String,
        #[arg(long, default_value = "random")]
        policy: String,
        /// The request key consistent hashing routes by
        #[arg(long)]
        key: Option<String>,
    },
}

/// The client commands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Write a key
    Put(PutArgs),
    /// Read a key or a range
    Get(GetArgs),
    /// Delete a key or a prefix
    Del(DelArgs),
    /// A transaction: compare, then one list of operations or the other
    Txn(TxnArgs),
    /// Print changes to a key or prefix
    Watch(WatchArgs),
    /// Leases
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Cluster membership
    #[command(subcommand)]
    Member(MemberCommand),
    /// Endpoint health and status
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Hold a distributed lock (with a fencing token), optionally around a command
    Lock(LockArgs),
    /// Campaign in an election, or follow its leader
    Elect(ElectArgs),
    /// Service registry and discovery
    #[command(subcommand)]
    Service(ServiceCommand),
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hex_id(id: &str) -> anyhow::Result<i64> {
    let id = id.trim_start_matches("0x");
    u64::from_str_radix(id, 16)
        .map(|v| v as i64)
        .with_context(|| format!("{id:?} is not a hexadecimal id"))
}

/// Runs one client command.
pub async fn run(
    command: ClientCommand,
    endpoints: &Endpoints,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = endpoints.connect().await?;
    match command {
        ClientCommand::Put(args) => {
            let lease = args.lease.as_deref().map(hex_id).transpose()?.unwrap_or(0);
            let options = PutOptions {
                lease,
                ..PutOptions::default()
            };
            client.put(&args.key, &args.value, options).await?;
            println!("OK");
        }
        ClientCommand::Get(args) => {
            let options = GetOptions {
                prefix: args.prefix,
                revision: args.rev,
                limit: args.limit,
                keys_only: args.keys_only,
                serializable: args.serializable,
                ..GetOptions::default()
            };
            for kv in client.get(&args.key, options).await?.kvs {
                println!("{}", text(&kv.key));
                if !args.keys_only {
                    println!("{}", text(&kv.value));
                }
            }
        }
        ClientCommand::Del(args) => {
            let options = DeleteOptions {
                prefix: args.prefix,
                ..DeleteOptions::default()
            };
            println!("{}", client.delete(&args.key, options).await?.deleted);
        }
        ClientCommand::Txn(args) => txn(&client, args).await?,
        ClientCommand::Watch(args) => watch(&client, args, stop).await?,
        ClientCommand::Lease(command) => lease(&client, command, stop).await?,
        ClientCommand::Member(command) => member(&client, command).await?,
        ClientCommand::Endpoint(EndpointCommand::Status) => {
            for url in endpoints.urls() {
                match client.status(&url).await {
                    Ok(s) => {
                        let id = s.header.as_ref().map_or(0, |h| h.member_id);
                        println!(
                            "{url}, {id:x}, {}, {} B, leader: {}, term {}, index {}, applied {}",
                            s.version,
                            s.db_size,
                            s.leader == id,
                            s.raft_term,
                            s.raft_index,
                            s.raft_applied_index
                        );
                    }
                    Err(error) => println!("{url}, unhealthy: {error}"),
                }
            }
        }
        ClientCommand::Lock(args) => lock(&client, args, stop).await?,
        ClientCommand::Elect(args) => elect(&client, args, stop).await?,
        ClientCommand::Service(command) => service(&client, command, stop).await?,
    }
    Ok(())
}

fn parse_compare(text: &str) -> anyhow::Result<Compare> {
    for (symbol, cmp, negate) in [
        ("!=", Cmp::Equal, true),
        ("=", Cmp::Equal, false),
        (">", Cmp::Greater, false),
        ("<", Cmp::Less, false),
    ] {
        if let Some((key, value)) = text.split_once(symbol) {
            let compare = Compare::value(key.trim(), cmp, value.trim());
            return Ok(if negate {
                Compare::value(key.trim(), Cmp::NotEqual, value.trim())
            } else {
                compare
            });
        }
    }
    bail!("--if {text:?}: expected KEY = VALUE, KEY != VALUE, KEY > VALUE or KEY < VALUE")
}

fn parse_op(text: &str) -> anyhow::Result<Op> {
    let mut words = text.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("put"), Some(key), Some(value)) => Ok(Op::put(key, value, PutOptions::default())),
        (Some("get"), Some(key), None) => Ok(Op::get(key, GetOptions::default())),
        (Some("del"), Some(key), None) => Ok(Op::delete(key, DeleteOptions::default())),
        _ => bail!("{text:?}: expected `put KEY VALUE`, `get KEY` or `del KEY`"),
    }
}

async fn txn(client: &Client, args: TxnArgs) -> anyhow::Result<()> {
    let compares = args
        .compares
        .iter()
        .map(|c| parse_compare(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let then = args
        .then
        .iter()
        .map(|o| parse_op(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let otherwise = args
        .otherwise
        .iter()
        .map(|o| parse_op(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let response = client
        .txn(Txn::new().when(compares).and_then(then).or_else(otherwise))
        .await?;
    println!(
        "{}",
        if response.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
    for op in response.responses {
        use pb::response_op::Response as R;
        match op.response {
            Some(R::ResponsePut(_)) => println!("OK"),
            Some(R::ResponseDeleteRange(d)) => println!("{}", d.deleted),
            Some(R::ResponseRange(r)) => {
                for kv in r.kvs {
                    println!("{}\n{}", text(&kv.key), text(&kv.value));
                }
            }
            Some(R::ResponseTxn(_)) | None => {}
        }
    }
    Ok(())
}

async fn watch(
    client: &Client,
    args: WatchArgs,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let options = WatchOptions {
        prefix: args.prefix,
        start_revision: args.rev,
        ..WatchOptions::default()
    };
    let mut watcher = client.watch(&args.key, options);
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            () = &mut stop => return Ok(()),
            batch = watcher.next() => batch,
        };
        let Some(batch) = batch else { return Ok(()) };
        for event in batch?.events {
            let kind = if event.r#type == 0 { "PUT" } else { "DELETE" };
            let kv = event.kv.unwrap_or_default();
            println!("{kind}\n{}\n{}", text(&kv.key), text(&kv.value));
        }
    }
}

async fn lease(
    client: &Client,
    command: LeaseCommand,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    match command {
        LeaseCommand::Grant { ttl } => {
            let grant = client.lease_grant(ttl, 0).await?;
            println!("lease {:016x} granted with TTL({}s)", grant.id, grant.ttl);
        }
        LeaseCommand::Revoke { id } => {
            let id = hex_id(&id)?;
            client.lease_revoke(id).await?;
            println!("lease {id:016x} revoked");
        }
        LeaseCommand::Timetolive { id } => {
            let id = hex_id(&id)?;
            let ttl = client.lease_time_to_live(id, true).await?;
            if ttl.ttl < 0 {
                println!("lease {id:016x} already expired");
            } else {
                let keys: Vec<String> = ttl.keys.iter().map(|k| text(k)).collect();
                println!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s), attached keys({keys:?})",
                    ttl.granted_ttl, ttl.ttl
                );
            }
        }
        LeaseCommand::KeepAlive { id } => {
            let id = hex_id(&id)?;
            let ttl = client.lease_time_to_live(id, false).await?.granted_ttl;
            let keeper = client.lease_keep_alive(id, ttl);
            tokio::select! {
                () = stop => keeper.stop(),
                lost = keeper.lost() => bail!("{lost}"),
            }
        }
        LeaseCommand::List => {
            let leases = client.lease_leases().await?.leases;
            println!("found {} leases", leases.len());
            for lease in leases {
                println!("{:016x}", lease.id);
            }
        }
    }
    Ok(())
}

async fn member(client: &Client, command: MemberCommand) -> anyhow::Result<()> {
    let cluster = |channel| pb::cluster_client::ClusterClient::new(channel);
    match command {
        MemberCommand::List => {
            for m in client.member_list().await?.members {
                let started = if m.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                };
                println!(
                    "{:x}, {started}, {}, {}, {}, {}",
                    m.id,
                    m.name,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner
                );
            }
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let urls: Vec<String> = peer_urls.split(',').map(str::to_string).collect();
            let added = client
                .call(Kind::Write, None, |channel| {
                    let request = pb::MemberAddRequest {
                        peer_ur_ls: urls.clone(),
                        is_learner: learner,
                    };
                    async move { cluster(channel).member_add(request).await }
                })
                .await?;
            let id = added.member.map_or(0, |m| m.id);
            println!("Member {id:x} added; start {name} with --initial-cluster-state existing");
        }
        MemberCommand::Remove { id } => {
            let id = hex_id(&id)? as u64;
            client
                .call(Kind::Write, None, |channel| async move {
                    cluster(channel)
                        .member_remove(pb::MemberRemoveRequest { id })
                        .await
                })
                .await?;
            println!("Member {id:x} removed");
        }
        MemberCommand::Promote { id } => {
            let id = hex_id(&id)? as u64;
            client
                .call(Kind::Write, None, |channel| async move {
                    cluster(channel)
                        .member_promote(pb::MemberPromoteRequest { id })
                        .await
                })
                .await?;
            println!("Member {id:x} promoted");
        }
    }
    Ok(())
}

async fn lock(
    client: &Client,
    args: LockArgs,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let session = client.lease_grant_kept(args.ttl).await?;
    let guard = Mutex::new(client.clone(), &args.name)
        .lock(&session)
        .await?;
    let token = guard.fencing_token();
    let result = if let Some((program, rest)) = args.command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .env("CHORUS_LOCK_KEY", guard.key_str())
            .env("CHORUS_FENCING_TOKEN", token.to_string())
            .spawn()
            .with_context(|| format!("run {program}"))?;
        tokio::select! {
            status = child.wait() => {
                let status = status.context("wait for the command")?;
                if status.success() { Ok(()) } else { Err(anyhow::anyhow!("the command failed: {status}")) }
            }
            lost = session.lost() => {
                let _ = child.kill().await;
                Err(anyhow::anyhow!("the lock was lost: {lost}"))
            }
        }
    } else {
        println!("{}\nfencing token {token}", guard.key_str());
        tokio::select! {
            () = stop => Ok(()),
            lost = session.lost() => Err(anyhow::anyhow!("the lock was lost: {lost}")),
        }
    };
    guard.unlock().await?;
    let _ = client.lease_revoke(session.id()).await;
    result
}

async fn elect(
    client: &Client,
    args: ElectArgs,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let election = Election::new(client.clone(), &args.name);
    tokio::pin!(stop);
    let Some(proposal) = args.proposal else {
        let mut observer = election.observe();
        loop {
            let leader = tokio::select! {
                () = &mut stop => return Ok(()),
                leader = observer.next() => leader?,
            };
            if let Some(kv) = leader {
                println!("{}\n{}", text(&kv.key), text(&kv.value));
            }
        }
    };
    let session = client.lease_grant_kept(args.ttl).await?;
    let leadership = tokio::select! {
        () = &mut stop => return Ok(()),
        won = election.campaign(&session, &proposal) => won?,
    };
    println!("{}\n{proposal}", text(leadership.key()));
    let result = tokio::select! {
        () = &mut stop => Ok(()),
        lost = session.lost() => Err(anyhow::anyhow!("leadership lost: {lost}")),
    };
    leadership.resign().await?;
    let _ = client.lease_revoke(session.id()).await;
    result
}

fn policy(name: &str) -> anyhow::Result<PolicyKind> {
    Ok(match name {
        "round-robin" => PolicyKind::RoundRobin,
        "random" => PolicyKind::Random,
        "power-of-two" => PolicyKind::PowerOfTwo,
        "consistent-hash" => PolicyKind::ConsistentHash,
        "least-outstanding" => PolicyKind::LeastOutstanding,
        other => bail!(
            "--policy {other:?}: expected round-robin, random, power-of-two, consistent-hash or least-outstanding"
        ),
    })
}

async fn service(
    client: &Client,
    command: ServiceCommand,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let print = |discovery: &Discovery| {
        for instance in discovery.instances() {
            println!("{} {}", instance.id, text(&instance.value));
        }
    };
    match command {
        ServiceCommand::Register {
            service,
            id,
            value,
            ttl,
        } => {
            let registration = Registration::register(client, &service, &id, &value, ttl).await?;
            println!("registered {}", text(registration.key()));
            tokio::select! {
                () = stop => {}
                lost = registration.lease().lost() => bail!("{lost}"),
            }
            registration.deregister().await?;
        }
        ServiceCommand::List { service } => {
            print(&Discovery::start(client, &service, PolicyKind::RoundRobin).await?);
        }
        ServiceCommand::Watch { service } => {
            let mut discovery = Discovery::start(client, &service, PolicyKind::RoundRobin).await?;
            print(&discovery);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    changed = discovery.changed() => changed?,
                }
                println!("--");
                print(&discovery);
            }
        }
        ServiceCommand::Pick {
            service,
            policy: name,
            key,
        } => {
            let discovery = Discovery::start(client, &service, policy(&name)?).await?;
            let Some(instance) = discovery.pick(key.as_deref().map(str::as_bytes)) else {
                bail!("no instance of {service} is registered");
            };
            println!("{} {}", instance.id, text(&instance.value));
        }
    }
    Ok(())
}
