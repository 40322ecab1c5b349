//! The node configuration: etcd's flag names and defaults, from flags, `CHORUS_*` environment
//! variables and a TOML file, validated into one [`ServerConfig`].
//!
//! Precedence, highest first: command-line flags, environment variables, the config file,
//! defaults. Each option has one name, the etcd flag name without dashes in front
//! (`listen-client-urls`); the environment variable is that name upper-cased with `_` for `-`
//! after the `CHORUS_` prefix (`CHORUS_LISTEN_CLIENT_URLS`), and the file key is the name itself
//! (`listen-client-urls = "http://127.0.0.1:2379"`).
//!
//! Resolution is a pure function of its inputs: [`ServerConfig::resolve`] takes the parsed
//! flags, the environment as a map and the text of the config file, so tests never touch the
//! process environment. [`ServerConfig::load`] is the thin wrapper that reads the file.
//!
//! Defaults follow etcd 3.5 (`embed.NewConfig`), with one deliberate difference: etcd listens on
//! `http://localhost:2379`/`2380`, which resolves to an address family of the system's choosing;
//! Chorus listens on `127.0.0.1` (DESIGN.md, "Contracts") and advertises `localhost` as etcd does.
//! What this module does not hold: the limits of the peer transport (`transport::TransportConfig`)
//! and of the Raft core (`chorus_raft::Config`), which the node derives from this one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_raft::NodeId;

/// Default of `--heartbeat-interval`, in milliseconds (etcd's).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;
/// Default of `--election-timeout`, in milliseconds (etcd's).
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// The longest election timeout etcd accepts, in milliseconds.
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
/// The election timeout must be at least this many heartbeat intervals (etcd's rule).
pub const ELECTION_HEARTBEAT_RATIO_MIN: u64 = 5;
/// Default of `--snapshot-count` (etcd 3.5).
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 100_000;
/// Default of `--quota-backend-bytes`: 2 GiB (etcd's).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// Default of `--max-request-bytes`: 1.5 MiB (etcd's).
pub const REQUEST_BYTES_MAX_DEFAULT: u64 = 1_572_864;
/// Default of `--max-txn-ops` (etcd's).
pub const TXN_OPS_MAX_DEFAULT: u64 = 128;

/// The options of `chorus serve`, as typed on the command line. Every field is optional so that
/// an option left out falls through to the environment, the file and then the default.
///
/// The binary embeds this as `chorus serve [ARGS]`; [`ServerConfig::load`] turns it into a
/// validated configuration.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerArgs {
    /// Human-readable name of this member [default: default] [env: CHORUS_NAME]
    #[arg(long)]
    pub name: Option<String>,
    /// Directory of the data [default: <name>.chorus] [env: CHORUS_DATA_DIR]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic, comma-separated [default: http://127.0.0.1:2379]
    #[arg(long)]
    pub listen_client_urls: Option<String>,
    /// Client URLs of this member to tell clients [default: http://localhost:2379]
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic, comma-separated [default: http://127.0.0.1:2380]
    #[arg(long)]
    pub listen_peer_urls: Option<String>,
    /// Peer URLs of this member to tell the other members [default: http://localhost:2380]
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial members, as name=peer-url pairs, comma-separated
    /// [default: <name>=<initial-advertise-peer-urls>]
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Whether this member starts a new cluster or joins an existing one: new | existing
    /// [default: new]
    #[arg(long)]
    pub initial_cluster_state: Option<String>,
    /// Token that keeps clusters started from the same member list apart
    /// [default: etcd-cluster]
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// Time between heartbeats, in milliseconds [default: 100]
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// Time without a leader before an election, in milliseconds [default: 1000]
    #[arg(long)]
    pub election_timeout: Option<u64>,
    /// Applied entries between two snapshots [default: 100000]
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Size of the data above which writes are refused, in bytes [default: 2147483648]
    #[arg(long)]
    pub quota_backend_bytes: Option<u64>,
    /// Largest client request accepted, in bytes [default: 1572864]
    #[arg(long)]
    pub max_request_bytes: Option<u64>,
    /// Most operations in one branch of a transaction [default: 128]
    #[arg(long)]
    pub max_txn_ops: Option<u64>,
    /// History kept by automatic compaction: hours or a duration such as `30m` in periodic
    /// mode, a number of revisions in revision mode; 0 disables it [default: 0]
    #[arg(long)]
    pub auto_compaction_retention: Option<String>,
    /// How to read the retention: periodic | revision [default: periodic]
    #[arg(long)]
    pub auto_compaction_mode: Option<String>,
    /// Least severe level logged: debug | info | warn | error [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
    /// Shape of the log lines: json | text [default: text]
    #[arg(long)]
    pub log_format: Option<String>,
    /// TOML file whose keys are the flag names [env: CHORUS_CONFIG_FILE]
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Time between progress notifications of watchers that asked for them, as `10m`, `5s`
    /// or `500ms` [default: 10m]
    #[arg(long)]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// URLs to serve `/metrics` (Prometheus text, etcd's metric names) and `/health` on over
    /// plain HTTP, comma-separated [default: none]
    #[arg(long)]
    pub listen_metrics_urls: Option<String>,
    /// How the leader confirms a linearizable read: read-index (a heartbeat round to a
    /// quorum, etcd's way) | lease (no round while the leader's lease from its last quorum
    /// contact holds; assumes bounded clock drift) [default: read-index]
    #[arg(long)]
    pub read_mode: Option<String>,
}

/// The names of every option, as flag, file key and (upper-cased) environment variable.
pub const OPTION_NAMES: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "heartbeat-interval",
    "election-timeout",
    "snapshot-count",
    "quota-backend-bytes",
    "max-request-bytes",
    "max-txn-ops",
    "auto-compaction-retention",
    "auto-compaction-mode",
    "log-level",
    "log-format",
    "config-file",
    "experimental-watch-progress-notify-interval",
    "read-mode",
    "listen-metrics-urls",
];

/// The prefix of the environment variables that set options.
pub const ENV_PREFIX: &str = "CHORUS_";

/// The environment variable of an option: `initial-cluster` -> `CHORUS_INITIAL_CLUSTER`.
pub fn env_var_name(option: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        option.to_ascii_uppercase().replace('-', "_")
    )
}

impl ServerArgs {
    /// The options given on the command line, by option name, as text.
    fn given(&self) -> Vec<(&'static str, String)> {
        fn text<T: ToString>(v: &Option<T>) -> Option<String> {
            v.as_ref().map(ToString::to_string)
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let values = [
            text(&self.name),
            path(&self.data_dir),
            text(&self.listen_client_urls),
            text(&self.advertise_client_urls),
            text(&self.listen_peer_urls),
            text(&self.initial_advertise_peer_urls),
            text(&self.initial_cluster),
            text(&self.initial_cluster_state),
            text(&self.initial_cluster_token),
            text(&self.heartbeat_interval),
            text(&self.election_timeout),
            text(&self.snapshot_count),
            text(&self.quota_backend_bytes),
            text(&self.max_request_bytes),
            text(&self.max_txn_ops),
            text(&self.auto_compaction_retention),
            text(&self.auto_compaction_mode),
            text(&self.log_level),
            text(&self.log_format),
            path(&self.config_file),
            text(&self.experimental_watch_progress_notify_interval),
            text(&self.read_mode),
            text(&self.listen_metrics_urls),
        ];
        debug_assert_eq!(values.len(), OPTION_NAMES.len());
        OPTION_NAMES
            .iter()
            .zip(values)
            .filter_map(|(name, v)| v.map(|v| (*name, v)))
            .collect()
    }
}

/// Where the value of an option came from; error messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => write!(f, "the command line"),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Default => write!(f, "the default"),
        }
    }
}

/// Why a configuration was refused. Every message names the offending values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for --{option} (from {from}): {reason}")]
    InvalidValue {
        option: &'static str,
        value: String,
        from: Source,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    FileRead { path: PathBuf, reason: String },
    #[error("cannot parse config file {path}: {reason}")]
    FileParse { path: PathBuf, reason: String },
    #[error("unknown key {key:?} in config file {path}; keys are the flag names, such as name")]
    UnknownFileKey { path: PathBuf, key: String },
    #[error("--{option} must be greater than 0 (set to {value})")]
    Zero { option: &'static str, value: u64 },
    #[error(
        "--election-timeout[{election_ms}ms] should be at least 5 times \
         --heartbeat-interval[{heartbeat_ms}ms]"
    )]
    ElectionTimeoutTooShort { election_ms: u64, heartbeat_ms: u64 },
    #[error("--election-timeout[{election_ms}ms] is too long, and should be at most {max_ms}ms")]
    ElectionTimeoutTooLong { election_ms: u64, max_ms: u64 },
    #[error("--{option} must not be empty")]
    Empty { option: &'static str },
    #[error(
        "--advertise-client-urls is required when --listen-client-urls is set explicitly \
         (listen-client-urls={listen})"
    )]
    AdvertiseClientUrlsRequired { listen: String },
    #[error("invalid --initial-cluster entry {entry:?}: {reason}")]
    InvalidClusterEntry { entry: String, reason: String },
    #[error("--initial-cluster={initial_cluster} has no member named {name:?} (--name)")]
    NameMissingFromCluster {
        name: String,
        initial_cluster: String,
    },
    #[error("peer URL {url} appears twice in --initial-cluster (members {first:?} and {second:?})")]
    DuplicatePeerUrl {
        url: String,
        first: String,
        second: String,
    },
    #[error("URL {url} appears twice in --{option}")]
    DuplicateUrl { option: &'static str, url: String },
    #[error("two members of --initial-cluster={initial_cluster} derive the same member id")]
    MemberIdCollision { initial_cluster: String },
    #[error(
        "--initial-cluster gives member {name:?} the peer URLs {cluster_urls} but \
         --initial-advertise-peer-urls is {advertise_urls}; they must be the same"
    )]
    AdvertisePeerUrlsMismatch {
        name: String,
        cluster_urls: String,
        advertise_urls: String,
    },
}

/// A URL a member listens on or advertises: `http` or `https`, a host and an explicit port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberUrl {
    pub scheme: UrlScheme,
    pub host: String,
    pub port: u16,
}

/// The schemes a member URL may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UrlScheme {
    Http,
    Https,
}

impl MemberUrl {
    /// Parses `scheme://host:port` (an optional trailing `/`); the reason says what is wrong.
    pub fn parse(text: &str) -> Result<MemberUrl, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("not a URL ({e})"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => UrlScheme::Http,
            Some("https") => UrlScheme::Https,
            Some(other) => return Err(format!("scheme {other:?} is not http or https")),
            None => return Err("missing scheme (http:// or https://)".to_string()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("missing host")?;
        let port = uri.port_u16().ok_or("missing port")?;
        if port == 0 {
            return Err("port 0 is not a fixed port".to_string());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("a member URL has no path or query".to_string());
        }
        Ok(MemberUrl {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// `host:port`, as a socket address to bind or dial.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for MemberUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            UrlScheme::Http => "http",
            UrlScheme::Https => "https",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// `--auto-compaction-mode` with its `--auto-compaction-retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention 0: history is kept until a client compacts.
    Disabled,
    /// Periodic mode: keep this much history.
    Periodic(Duration),
    /// Revision mode: keep this many revisions.
    Revision(u64),
}

/// `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The validated configuration of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<MemberUrl>,
    pub advertise_client_urls: Vec<MemberUrl>,
    pub listen_peer_urls: Vec<MemberUrl>,
    pub initial_advertise_peer_urls: Vec<MemberUrl>,
    /// Member name -> peer URLs, from `--initial-cluster`.
    pub initial_cluster: BTreeMap<String, Vec<MemberUrl>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub quota_backend_bytes: u64,
    /// `--max-request-bytes`.
    pub request_bytes_max: u64,
    /// `--max-txn-ops`.
    pub txn_ops_max: u64,
    pub auto_compaction: AutoCompaction,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub config_file: Option<PathBuf>,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// `--read-mode`.
    pub read_mode: ReadMode,
    /// `--listen-metrics-urls` (none unless given).
    pub listen_metrics_urls: Vec<MemberUrl>,
}

/// How linearizable reads are confirmed (`--read-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// etcd's ReadIndex: the leader confirms its leadership with a quorum for each batch.
    ReadIndex,
    /// Lease reads: the leader answers while its lease from the last quorum contact holds.
    Lease,
}

/// The value of each option with its source, after precedence has been applied.
struct Layered {
    values: HashMap<&'static str, (String, Source)>,
}

impl Layered {
    fn get(&self, option: &'static str) -> Option<&(String, Source)> {
        self.values.get(option)
    }

    fn is_set(&self, option: &'static str) -> bool {
        self.values.contains_key(option)
    }

    /// The text of an option, or `default` with [`Source::Default`].
    fn text_or(&self, option: &'static str, default: &str) -> (String, Source) {
        self.get(option)
            .cloned()
            .unwrap_or_else(|| (default.to_string(), Source::Default))
    }

    fn invalid(option: &'static str, value: &str, source: &Source, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            option,
            value: value.to_string(),
            from: source.clone(),
            reason,
        }
    }

    fn u64_or(&self, option: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(option) {
            None => Ok(default),
            Some((text, source)) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| Self::invalid(option, text, source, format!("not a number ({e})"))),
        }
    }

    fn urls_or(&self, option: &'static str, default: &str) -> Result<Vec<MemberUrl>, ConfigError> {
        let (text, source) = self.text_or(option, default);
        let urls = parse_url_list(&text)
            .map_err(|reason| Self::invalid(option, &text, &source, reason))?;
        if urls.is_empty() {
            return Err(ConfigError::Empty { option });
        }
        for (i, url) in urls.iter().enumerate() {
            if urls[..i].contains(url) {
                return Err(ConfigError::DuplicateUrl {
                    option,
                    url: url.to_string(),
                });
            }
        }
        Ok(urls)
    }

    fn choice<T: Copy>(
        &self,
        option: &'static str,
        default: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let (text, source) = self.text_or(option, default);
        let wanted = text.trim().to_ascii_lowercase();
        choices
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                Self::invalid(
                    option,
                    &text,
                    &source,
                    format!("expected one of {}", names.join(", ")),
                )
            })
    }
}

/// Parses a comma-separated list of member URLs (blank items are refused).
fn parse_url_list(text: &str) -> Result<Vec<MemberUrl>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|item| MemberUrl::parse(item.trim()).map_err(|r| format!("{:?}: {r}", item.trim())))
        .collect()
}

/// Parses `--initial-cluster`: `name=url,name=url,...`. As in etcd, a name may appear more than
/// once to give a member several peer URLs; the same URL twice is an error.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<String, Vec<MemberUrl>>, ConfigError> {
    let mut members: BTreeMap<String, Vec<MemberUrl>> = BTreeMap::new();
    let mut owner_of_url: HashMap<MemberUrl, String> = HashMap::new();
    for entry in text.split(',').map(str::trim) {
        let bad = |reason: &str| ConfigError::InvalidClusterEntry {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected name=url"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("empty member name"));
        }
        let url = MemberUrl::parse(url.trim()).map_err(|r| bad(&r))?;
        if let Some(first) = owner_of_url.insert(url.clone(), name.to_string()) {
            return Err(ConfigError::DuplicatePeerUrl {
                url: url.to_string(),
                first,
                second: name.to_string(),
            });
        }
        members.entry(name.to_string()).or_default().push(url);
    }
    Ok(members)
}

/// Parses a retention such as `1h`, `30m`, `1h30m`, `90s`, `500ms`, or a bare number of hours.
fn parse_period(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(hours) = text.parse::<u64>() {
        return hours
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or("too large".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".to_string());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err("expected a number before each unit, as in 1h30m".to_string());
        }
        let amount: u64 = rest[..digits].parse().map_err(|e| format!("{e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        let ms = amount.checked_mul(unit_ms).ok_or("too large")?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or("too large")?;
    }
    Ok(total)
}

/// Turns a TOML value into the text form every source shares. Lists of URLs may be written as
/// arrays of strings.
fn toml_value_text(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => {
            let texts: Result<Vec<String>, String> = items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!("array items must be strings, found {other}")),
                })
                .collect();
            Ok(texts?.join(","))
        }
        other => Err(format!("unsupported value {other}")),
    }
}

/// The options set by a config file, by option name.
fn file_values(path: &Path, text: &str) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::FileParse {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
    let mut values = Vec::new();
    for (key, value) in &table {
        let option = OPTION_NAMES
            .iter()
            .find(|n| **n == key.as_str())
            .ok_or_else(|| ConfigError::UnknownFileKey {
                path: path.to_path_buf(),
                key: key.clone(),
            })?;
        let text = toml_value_text(value).map_err(|reason| ConfigError::InvalidValue {
            option,
            value: value.to_string(),
            from: Source::File(path.to_path_buf()),
            reason,
        })?;
        values.push((*option, text));
    }
    Ok(values)
}

impl ServerConfig {
    /// Where the config file is, if any: `--config-file`, else `CHORUS_CONFIG_FILE`.
    pub fn config_file_path(args: &ServerArgs, env: &HashMap<String, String>) -> Option<PathBuf> {
        args.config_file
            .clone()
            .or_else(|| env.get(&env_var_name("config-file")).map(PathBuf::from))
    }

    /// Reads the config file named by the flags or the environment, then [`Self::resolve`]s.
    pub fn load(args: &ServerArgs, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let Some(path) = Self::config_file_path(args, env) else {
            return Self::resolve(args, env, None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::FileRead {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Self::resolve(args, env, Some((&path, &text)))
    }

    /// Resolves flags, then environment (`CHORUS_*`), then the file's text, then defaults, into
    /// a validated configuration. Environment variables that are not options are ignored.
    pub fn resolve(
        args: &ServerArgs,
        env: &HashMap<String, String>,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError> {
        let mut values: HashMap<&'static str, (String, Source)> = HashMap::new();
        if let Some((path, text)) = file {
            for (option, value) in file_values(path, text)? {
                values.insert(option, (value, Source::File(path.to_path_buf())));
            }
        }
        for option in OPTION_NAMES {
            let var = env_var_name(option);
            if let Some(value) = env.get(&var) {
                values.insert(option, (value.clone(), Source::Env(var)));
            }
        }
        for (option, value) in args.given() {
            values.insert(option, (value, Source::Flag));
        }
        let config = Self::from_layered(&Layered { values })?;
        config.validate()?;
        Ok(config)
    }

    fn from_layered(l: &Layered) -> Result<Self, ConfigError> {
        let (name, _) = l.text_or("name", "default");
        let data_dir = PathBuf::from(l.text_or("data-dir", &format!("{name}.chorus")).0);
        let listen_client_urls = l.urls_or("listen-client-urls", "http://127.0.0.1:2379")?;
        if l.is_set("listen-client-urls") && !l.is_set("advertise-client-urls") {
            let listen = join_urls(&listen_client_urls);
            return Err(ConfigError::AdvertiseClientUrlsRequired { listen });
        }
        let initial_advertise_peer_urls =
            l.urls_or("initial-advertise-peer-urls", "http://localhost:2380")?;
        // As in etcd: without --initial-cluster, the cluster is this member alone.
        let cluster_default = format!("{name}={}", join_urls(&initial_advertise_peer_urls));
        let (cluster_text, _) = l.text_or("initial-cluster", &cluster_default);
        Ok(ServerConfig {
            data_dir,
            listen_client_urls,
            advertise_client_urls: l.urls_or("advertise-client-urls", "http://localhost:2379")?,
            listen_peer_urls: l.urls_or("listen-peer-urls", "http://127.0.0.1:2380")?,
            initial_advertise_peer_urls,
            initial_cluster: parse_initial_cluster(&cluster_text)?,
            initial_cluster_state: l.choice(
                "initial-cluster-state",
                "new",
                &[
                    ("new", ClusterState::New),
                    ("existing", ClusterState::Existing),
                ],
            )?,
            initial_cluster_token: l.text_or("initial-cluster-token", "etcd-cluster").0,
            heartbeat_interval_ms: l.u64_or("heartbeat-interval", HEARTBEAT_INTERVAL_MS_DEFAULT)?,
            election_timeout_ms: l.u64_or("election-timeout", ELECTION_TIMEOUT_MS_DEFAULT)?,
            snapshot_count: l.u64_or("snapshot-count", SNAPSHOT_COUNT_DEFAULT)?,
            quota_backend_bytes: l.u64_or("quota-backend-bytes", QUOTA_BACKEND_BYTES_DEFAULT)?,
            request_bytes_max: l.u64_or("max-request-bytes", REQUEST_BYTES_MAX_DEFAULT)?,
            txn_ops_max: l.u64_or("max-txn-ops", TXN_OPS_MAX_DEFAULT)?,
            auto_compaction: auto_compaction(l)?,
            log_level: l.choice(
                "log-level",
                "info",
                &[
                    ("debug", LogLevel::Debug),
                    ("info", LogLevel::Info),
                    ("warn", LogLevel::Warn),
                    ("error", LogLevel::Error),
                ],
            )?,
            log_format: l.choice(
                "log-format",
                "text",
                &[("json", LogFormat::Json), ("text", LogFormat::Text)],
            )?,
            config_file: l.get("config-file").map(|(p, _)| PathBuf::from(p)),
            watch_progress_notify_interval: watch_progress_notify_interval(l)?,
            read_mode: l.choice(
                "read-mode",
                "read-index",
                &[
                    ("read-index", ReadMode::ReadIndex),
                    ("lease", ReadMode::Lease),
                ],
            )?,
            listen_metrics_urls: match l.is_set("listen-metrics-urls") {
                true => l.urls_or("listen-metrics-urls", "")?,
                false => Vec::new(),
            },
            name,
        })
    }

    /// Rejects configurations that cannot work, naming the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::Empty { option: "name" });
        }
        if self.initial_cluster_token.trim().is_empty() {
            return Err(ConfigError::Empty {
                option: "initial-cluster-token",
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Empty { option: "data-dir" });
        }
        self.validate_limits()?;
        self.validate_timing()?;
        self.validate_cluster()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = [
            ("heartbeat-interval", self.heartbeat_interval_ms),
            ("election-timeout", self.election_timeout_ms),
            ("snapshot-count", self.snapshot_count),
            ("quota-backend-bytes", self.quota_backend_bytes),
            ("max-request-bytes", self.request_bytes_max),
            ("max-txn-ops", self.txn_ops_max),
        ];
        match limits.iter().find(|(_, value)| *value == 0) {
            Some((option, value)) => Err(ConfigError::Zero {
                option,
                value: *value,
            }),
            None => Ok(()),
        }
    }

    fn validate_timing(&self) -> Result<(), ConfigError> {
        let (election_ms, heartbeat_ms) = (self.election_timeout_ms, self.heartbeat_interval_ms);
        if heartbeat_ms.saturating_mul(ELECTION_HEARTBEAT_RATIO_MIN) > election_ms {
            return Err(ConfigError::ElectionTimeoutTooShort {
                election_ms,
                heartbeat_ms,
            });
        }
        if election_ms > ELECTION_TIMEOUT_MS_MAX {
            return Err(ConfigError::ElectionTimeoutTooLong {
                election_ms,
                max_ms: ELECTION_TIMEOUT_MS_MAX,
            });
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(urls) = self.initial_cluster.get(&self.name) else {
            return Err(ConfigError::NameMissingFromCluster {
                name: self.name.clone(),
                initial_cluster: format_cluster(&self.initial_cluster),
            });
        };
        let mut cluster_urls = urls.clone();
        let mut advertise_urls = self.initial_advertise_peer_urls.clone();
        cluster_urls.sort();
        advertise_urls.sort();
        let ids = self.initial_member_ids();
        let mut distinct: Vec<NodeId> = ids.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != ids.len() {
            return Err(ConfigError::MemberIdCollision {
                initial_cluster: format_cluster(&self.initial_cluster),
            });
        }
        if cluster_urls != advertise_urls {
            return Err(ConfigError::AdvertisePeerUrlsMismatch {
                name: self.name.clone(),
                cluster_urls: join_urls(&cluster_urls),
                advertise_urls: join_urls(&advertise_urls),
            });
        }
        Ok(())
    }

    /// The member ids of the initial cluster, by name. Each is derived from the member's sorted
    /// peer URLs and the cluster token, as etcd derives them (with its own hash), so that every
    /// member computes the same ids without talking and two clusters started from the same
    /// member list with different tokens do not share ids. Never 0.
    pub fn initial_member_ids(&self) -> BTreeMap<String, NodeId> {
        self.initial_cluster
            .iter()
            .map(|(name, urls)| {
                let mut texts: Vec<String> = urls.iter().map(ToString::to_string).collect();
                texts.sort();
                let parts = texts.iter().map(String::as_bytes);
                let id = stable_id(parts.chain([self.initial_cluster_token.as_bytes()]));
                (name.clone(), NodeId(id))
            })
            .collect()
    }

    /// This member's id (see [`Self::initial_member_ids`]).
    pub fn member_id(&self) -> NodeId {
        // `validate` guarantees the name is in the initial cluster.
        self.initial_member_ids()
            .get(&self.name)
            .copied()
            .unwrap_or_default()
    }

    /// The cluster id: derived from the sorted member ids and the token, equal on every member.
    pub fn cluster_id(&self) -> u64 {
        let mut ids: Vec<u64> = self
            .initial_member_ids()
            .values()
            .map(|id| id.get())
            .collect();
        ids.sort_unstable();
        let bytes: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let parts = bytes.iter().map(|b| b.as_slice());
        stable_id(parts.chain([self.initial_cluster_token.as_bytes()]))
    }

    /// The election timeout in heartbeat intervals: the Raft core's `election_ticks`, with one
    /// tick per heartbeat interval as in etcd.
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout_ms / self.heartbeat_interval_ms
    }
}

/// etcd's `--experimental-watch-progress-notify-interval`: a duration with its unit, above zero.
fn watch_progress_notify_interval(l: &Layered) -> Result<Duration, ConfigError> {
    let option = "experimental-watch-progress-notify-interval";
    let (text, source) = l.text_or(option, "10m");
    let invalid = |reason: String| Layered::invalid(option, &text, &source, reason);
    if text.trim().parse::<u64>().is_ok() {
        return Err(invalid("give a unit, as in 10m, 5s or 500ms".to_string()));
    }
    let interval = parse_period(&text).map_err(invalid)?;
    if interval.is_zero() {
        return Err(invalid("must be above zero".to_string()));
    }
    Ok(interval)
}

fn auto_compaction(l: &Layered) -> Result<AutoCompaction, ConfigError> {
    #[derive(Clone, Copy)]
    enum Mode {
        Periodic,
        Revision,
    }
    let mode = l.choice(
        "auto-compaction-mode",
        "periodic",
        &[("periodic", Mode::Periodic), ("revision", Mode::Revision)],
    )?;
    let option = "auto-compaction-retention";
    let (text, source) = l.text_or(option, "0");
    let invalid = |reason: String| Layered::invalid(option, &text, &source, reason);
    match mode {
        Mode::Periodic => {
            let period = parse_period(&text).map_err(invalid)?;
            Ok(if period.is_zero() {
                AutoCompaction::Disabled
            } else {
                AutoCompaction::Periodic(period)
            })
        }
        Mode::Revision => {
            let revisions: u64 = text
                .trim()
                .parse()
                .map_err(|e| invalid(format!("revision mode takes a number of revisions ({e})")))?;
            Ok(if revisions == 0 {
                AutoCompaction::Disabled
            } else {
                AutoCompaction::Revision(revisions)
            })
        }
    }
}

/// FNV-1a (64-bit) over the parts, each followed by a 0 byte so that part boundaries count.
/// Stable across versions and platforms: ids derived from it are stored in data directories.
/// Zero, which is no member, becomes 1.
fn stable_id<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for part in parts {
        for byte in part.iter().chain(&[0u8]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash.max(1)
}

fn join_urls(urls: &[MemberUrl]) -> String {
    urls.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn format_cluster(cluster: &BTreeMap<String, Vec<MemberUrl>>) -> String {
    let mut entries = Vec::new();
    for (name, urls) in cluster {
        entries.extend(urls.iter().map(|url| format!("{name}={url}")));
    }
    entries.join(",")
}

#[cfg(test)]
mod tests;
