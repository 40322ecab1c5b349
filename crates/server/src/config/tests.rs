use std::collections::HashMap;
use std::path::Path;

use clap::Parser;

use super::*;

/// A stand-in for the future `chorus serve`, to parse flags the way the binary will.
#[derive(clap::Parser, Debug)]
struct Serve {
    #[command(flatten)]
    args: ServerArgs,
}

fn flags(list: &[&str]) -> ServerArgs {
    let mut argv = vec!["serve"];
    argv.extend_from_slice(list);
    Serve::try_parse_from(argv).expect("test flags parse").args
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resolve(
    flag_list: &[&str],
    env_pairs: &[(&str, &str)],
    file: Option<&str>,
) -> Result<ServerConfig, ConfigError> {
    let path = Path::new("/etc/chorus.toml");
    ServerConfig::resolve(
        &flags(flag_list),
        &env(env_pairs),
        file.map(|text| (path, text)),
    )
}

fn url(text: &str) -> MemberUrl {
    MemberUrl::parse(text).expect("test URL parses")
}

// Goal: with nothing set, the configuration is etcd's single-member default (DESIGN.md,
// "Contracts"). Method: resolve empty inputs and compare every field.
#[test]
fn defaults_match_etcd() {
    let config = resolve(&[], &[], None).expect("defaults are valid");
    let expected = ServerConfig {
        name: "default".into(),
        data_dir: "default.chorus".into(),
        listen_client_urls: vec![url("http://127.0.0.1:2379")],
        advertise_client_urls: vec![url("http://localhost:2379")],
        listen_peer_urls: vec![url("http://127.0.0.1:2380")],
        initial_advertise_peer_urls: vec![url("http://localhost:2380")],
        initial_cluster: BTreeMap::from([(
            "default".to_string(),
            vec![url("http://localhost:2380")],
        )]),
        initial_cluster_state: ClusterState::New,
        initial_cluster_token: "etcd-cluster".into(),
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        snapshot_count: 100_000,
        quota_backend_bytes: 2 * 1024 * 1024 * 1024,
        request_bytes_max: 1_572_864,
        txn_ops_max: 128,
        auto_compaction: AutoCompaction::Disabled,
        log_level: LogLevel::Info,
        log_format: LogFormat::Text,
        config_file: None,
        watch_progress_notify_interval: std::time::Duration::from_secs(600),
        read_mode: ReadMode::ReadIndex,
        listen_metrics_urls: Vec::new(),
    };
    assert_eq!(config, expected);
    assert_eq!(config.election_ticks(), 10);
}

// Goal: a renamed member gets its own data directory and a one-member cluster of its own
// name, as etcd derives them. Method: set only --name and the peer URL.
#[test]
fn name_drives_data_dir_and_default_cluster() {
    let config = resolve(
        &[
            "--name",
            "infra1",
            "--initial-advertise-peer-urls",
            "http://10.0.0.1:2380",
        ],
        &[],
        None,
    )
    .expect("valid");
    assert_eq!(config.data_dir, PathBuf::from("infra1.chorus"));
    assert_eq!(
        config.initial_cluster,
        BTreeMap::from([("infra1".to_string(), vec![url("http://10.0.0.1:2380")])])
    );
}

// Goal: flags beat environment beats file beats default, option by option.
// Method: a table of (flag, env, file) settings of --snapshot-count and the value expected.
#[test]
fn precedence_flag_env_file_default() {
    /// (flag, environment, file, expected).
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, u64);
    let cases: &[Case] = &[
        (None, None, None, 100_000),
        (None, None, Some("3"), 3),
        (None, Some("2"), Some("3"), 2),
        (Some("1"), Some("2"), Some("3"), 1),
        (Some("1"), None, Some("3"), 1),
        (Some("1"), Some("2"), None, 1),
        (None, Some("2"), None, 2),
    ];
    for (flag, env_value, file_value, expected) in cases {
        let mut flag_list = Vec::new();
        if let Some(v) = flag {
            flag_list.extend(["--snapshot-count", v]);
        }
        let env_pairs: Vec<(&str, &str)> = env_value
            .iter()
            .map(|v| ("CHORUS_SNAPSHOT_COUNT", *v))
            .collect();
        let file = file_value.map(|v| format!("snapshot-count = {v}\n"));
        let config = resolve(&flag_list, &env_pairs, file.as_deref()).expect("valid");
        assert_eq!(
            config.snapshot_count, *expected,
            "flag={flag:?} env={env_value:?} file={file_value:?}"
        );
    }
}

// Goal: every option can be set from each source under its documented name.
// Method: set all options in a file, then all in the environment, and check each field.
#[test]
fn every_option_from_file_and_from_env() {
    let file = r#"
        name = "n1"
        data-dir = "/var/lib/chorus"
        listen-client-urls = ["http://0.0.0.0:3379", "http://127.0.0.1:3379"]
        advertise-client-urls = "http://n1:3379"
        listen-peer-urls = "http://0.0.0.0:3380"
        initial-advertise-peer-urls = "http://n1:3380"
        initial-cluster = "n1=http://n1:3380,n2=http://n2:3380,n3=http://n3:3380"
        initial-cluster-state = "existing"
        initial-cluster-token = "tok"
        heartbeat-interval = 50
        election-timeout = 500
        snapshot-count = 10
        quota-backend-bytes = 1024
        max-request-bytes = 2048
        max-txn-ops = 16
        auto-compaction-retention = "1h30m"
        auto-compaction-mode = "periodic"
        log-level = "debug"
        log-format = "json"
        read-mode = "lease"
        listen-metrics-urls = "http://127.0.0.1:3381"
    "#;
    let from_file = resolve(&[], &[], Some(file)).expect("file config is valid");
    let env_pairs: Vec<(String, String)> = file
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(k, v)| {
            let v = v
                .trim()
                .trim_matches(['[', ']'])
                .replace("\", \"", ",")
                .replace('"', "");
            (env_var_name(k.trim()), v)
        })
        .collect();
    let env_refs: Vec<(&str, &str)> = env_pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let from_env = resolve(&[], &env_refs, None).expect("env config is valid");
    assert_eq!(from_file, from_env);

    let c = from_file;
    assert_eq!(c.name, "n1");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/chorus"));
    assert_eq!(
        c.listen_client_urls,
        vec![url("http://0.0.0.0:3379"), url("http://127.0.0.1:3379")]
    );
    assert_eq!(c.advertise_client_urls, vec![url("http://n1:3379")]);
    assert_eq!(c.listen_peer_urls, vec![url("http://0.0.0.0:3380")]);
    assert_eq!(c.listen_metrics_urls, vec![url("http://127.0.0.1:3381")]);
    assert_eq!(c.initial_cluster.len(), 3);
    assert_eq!(c.initial_cluster["n2"], vec![url("http://n2:3380")]);
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    assert_eq!(c.initial_cluster_token, "tok");
    assert_eq!((c.heartbeat_interval_ms, c.election_timeout_ms), (50, 500));
    assert_eq!((c.snapshot_count, c.quota_backend_bytes), (10, 1024));
    assert_eq!((c.request_bytes_max, c.txn_ops_max), (2048, 16));
    assert_eq!(
        c.auto_compaction,
        AutoCompaction::Periodic(Duration::from_secs(5400))
    );
    assert_eq!(
        (c.log_level, c.log_format),
        (LogLevel::Debug, LogFormat::Json)
    );
    assert_eq!(c.read_mode, ReadMode::Lease);
}

// Goal: the retention is read as etcd reads it for each mode. Method: a table of
// (mode, retention) pairs and the expected result.
#[test]
fn auto_compaction_retention_by_mode() {
    let cases: &[(&str, &str, AutoCompaction)] = &[
        ("periodic", "0", AutoCompaction::Disabled),
        (
            "periodic",
            "1",
            AutoCompaction::Periodic(Duration::from_secs(3600)),
        ),
        (
            "periodic",
            "30m",
            AutoCompaction::Periodic(Duration::from_secs(1800)),
        ),
        (
            "periodic",
            "10s",
            AutoCompaction::Periodic(Duration::from_secs(10)),
        ),
        (
            "periodic",
            "250ms",
            AutoCompaction::Periodic(Duration::from_millis(250)),
        ),
        ("revision", "1000", AutoCompaction::Revision(1000)),
        ("revision", "0", AutoCompaction::Disabled),
    ];
    for (mode, retention, expected) in cases {
        let config = resolve(
            &[
                "--auto-compaction-mode",
                mode,
                "--auto-compaction-retention",
                retention,
            ],
            &[],
            None,
        )
        .expect("valid");
        assert_eq!(config.auto_compaction, *expected, "{mode} {retention}");
    }
}

// Goal: a config file is found through --config-file or CHORUS_CONFIG_FILE and read from disk.
// Method: write a file in a temporary directory and load it both ways.
#[test]
fn config_file_is_read_from_flag_or_env() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chorus.toml");
    std::fs::write(&path, "max-txn-ops = 7\n").expect("write config");
    let path_text = path.to_str().expect("utf-8 path");

    let by_flag = ServerConfig::load(&flags(&["--config-file", path_text]), &env(&[]))
        .expect("loads by flag");
    assert_eq!(by_flag.txn_ops_max, 7);
    assert_eq!(by_flag.config_file.as_deref(), Some(path.as_path()));

    let by_env = ServerConfig::load(&flags(&[]), &env(&[("CHORUS_CONFIG_FILE", path_text)]))
        .expect("loads by env");
    assert_eq!(by_env.txn_ops_max, 7);

    let missing = dir.path().join("missing.toml");
    let err = ServerConfig::load(
        &flags(&["--config-file", missing.to_str().unwrap()]),
        &env(&[]),
    )
    .expect_err("a missing file is an error");
    assert!(matches!(err, ConfigError::FileRead { .. }), "{err}");
}

// Goal: each kind of nonsense is refused with an error that names the values.
// Method: a table of inputs, the expected error variant, and text the message must contain.
#[test]
fn validation_errors_name_the_values() {
    type Check = fn(&ConfigError) -> bool;
    /// (flags, environment, file, expected error, text of its message).
    type Case<'a> = (
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        Check,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            &["--heartbeat-interval", "300", "--election-timeout", "1000"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::ElectionTimeoutTooShort {
                        election_ms: 1000,
                        heartbeat_ms: 300
                    }
                )
            },
            "--election-timeout[1000ms] should be at least 5 times --heartbeat-interval[300ms]",
        ),
        (
            &["--heartbeat-interval", "100", "--election-timeout", "60000"],
            &[],
            None,
            |e| matches!(e, ConfigError::ElectionTimeoutTooLong { .. }),
            "60000ms",
        ),
        (
            &["--heartbeat-interval", "0"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Zero {
                        option: "heartbeat-interval",
                        ..
                    }
                )
            },
            "--heartbeat-interval must be greater than 0",
        ),
        (
            &["--max-txn-ops", "0"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Zero {
                        option: "max-txn-ops",
                        ..
                    }
                )
            },
            "--max-txn-ops",
        ),
        (
            &["--max-request-bytes", "0"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Zero {
                        option: "max-request-bytes",
                        ..
                    }
                )
            },
            "--max-request-bytes",
        ),
        (
            &["--quota-backend-bytes", "0"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Zero {
                        option: "quota-backend-bytes",
                        ..
                    }
                )
            },
            "--quota-backend-bytes",
        ),
        (
            &["--snapshot-count", "0"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Zero {
                        option: "snapshot-count",
                        ..
                    }
                )
            },
            "--snapshot-count",
        ),
        (
            &[
                "--name",
                "n4",
                "--initial-cluster",
                "n1=http://a:2380,n2=http://b:2380",
            ],
            &[],
            None,
            |e| matches!(e, ConfigError::NameMissingFromCluster { .. }),
            "n1=http://a:2380,n2=http://b:2380 has no member named \"n4\"",
        ),
        (
            &[
                "--name",
                "n1",
                "--initial-advertise-peer-urls",
                "http://a:2380",
                "--initial-cluster",
                "n1=http://a:2380,n2=http://a:2380",
            ],
            &[],
            None,
            |e| matches!(e, ConfigError::DuplicatePeerUrl { .. }),
            "peer URL http://a:2380 appears twice in --initial-cluster (members \"n1\" and \"n2\")",
        ),
        (
            &["--initial-cluster", "default"],
            &[],
            None,
            |e| matches!(e, ConfigError::InvalidClusterEntry { .. }),
            "\"default\": expected name=url",
        ),
        (
            &["--initial-cluster", "=http://a:2380"],
            &[],
            None,
            |e| matches!(e, ConfigError::InvalidClusterEntry { .. }),
            "empty member name",
        ),
        (
            &["--initial-cluster", "default=localhost:2380"],
            &[],
            None,
            |e| matches!(e, ConfigError::InvalidClusterEntry { .. }),
            "default=localhost:2380",
        ),
        (
            &["--listen-peer-urls", "ftp://127.0.0.1:2380"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "listen-peer-urls",
                        ..
                    }
                )
            },
            "scheme \"ftp\" is not http or https",
        ),
        (
            &["--listen-peer-urls", "http://127.0.0.1"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "listen-peer-urls",
                        ..
                    }
                )
            },
            "missing port",
        ),
        (
            &[
                "--listen-peer-urls",
                "http://127.0.0.1:2380,http://127.0.0.1:2380",
            ],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::DuplicateUrl {
                        option: "listen-peer-urls",
                        ..
                    }
                )
            },
            "http://127.0.0.1:2380 appears twice",
        ),
        (
            &["--listen-client-urls", "http://0.0.0.0:2379"],
            &[],
            None,
            |e| matches!(e, ConfigError::AdvertiseClientUrlsRequired { .. }),
            "listen-client-urls=http://0.0.0.0:2379",
        ),
        (
            &["--initial-advertise-peer-urls", "http://10.0.0.1:2380"],
            &[],
            Some("initial-cluster = \"default=http://10.0.0.2:2380\""),
            |e| matches!(e, ConfigError::AdvertisePeerUrlsMismatch { .. }),
            "peer URLs http://10.0.0.2:2380 but --initial-advertise-peer-urls is http://10.0.0.1:2380",
        ),
        (
            &["--initial-cluster-state", "old"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "initial-cluster-state",
                        ..
                    }
                )
            },
            "invalid value \"old\" for --initial-cluster-state (from the command line): expected one of new, existing",
        ),
        (
            &[],
            &[("CHORUS_AUTO_COMPACTION_MODE", "hourly")],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "auto-compaction-mode",
                        ..
                    }
                )
            },
            "(from environment variable CHORUS_AUTO_COMPACTION_MODE): expected one of periodic, revision",
        ),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "auto-compaction-retention",
                        ..
                    }
                )
            },
            "revision mode takes a number of revisions",
        ),
        (
            &["--auto-compaction-retention", "5 fortnights"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "auto-compaction-retention",
                        ..
                    }
                )
            },
            "unknown unit",
        ),
        (
            &["--log-level", "loud"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "log-level",
                        ..
                    }
                )
            },
            "expected one of debug, info, warn, error",
        ),
        (
            &["--log-format", "xml"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "log-format",
                        ..
                    }
                )
            },
            "expected one of json, text",
        ),
        (
            &["--read-mode", "stale"],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "read-mode",
                        ..
                    }
                )
            },
            "expected one of read-index, lease",
        ),
        (
            &[],
            &[("CHORUS_HEARTBEAT_INTERVAL", "fast")],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "heartbeat-interval",
                        ..
                    }
                )
            },
            "invalid value \"fast\" for --heartbeat-interval (from environment variable CHORUS_HEARTBEAT_INTERVAL)",
        ),
        (
            &[],
            &[],
            Some("heartbeat-intervall = 10"),
            |e| matches!(e, ConfigError::UnknownFileKey { .. }),
            "unknown key \"heartbeat-intervall\" in config file /etc/chorus.toml",
        ),
        (
            &[],
            &[],
            Some("name = "),
            |e| matches!(e, ConfigError::FileParse { .. }),
            "cannot parse config file /etc/chorus.toml",
        ),
        (
            &[],
            &[],
            Some("snapshot-count = \"many\""),
            |e| {
                matches!(
                    e,
                    ConfigError::InvalidValue {
                        option: "snapshot-count",
                        ..
                    }
                )
            },
            "(from config file /etc/chorus.toml)",
        ),
        (
            &["--name", ""],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Empty { option: "name" } | ConfigError::InvalidClusterEntry { .. }
                )
            },
            "",
        ),
        (
            &["--initial-cluster-token", " "],
            &[],
            None,
            |e| {
                matches!(
                    e,
                    ConfigError::Empty {
                        option: "initial-cluster-token"
                    }
                )
            },
            "--initial-cluster-token must not be empty",
        ),
    ];
    for (flag_list, env_pairs, file, check, text) in cases {
        let err = resolve(flag_list, env_pairs, *file).expect_err(&format!(
            "must be refused: {flag_list:?} {env_pairs:?} {file:?}"
        ));
        assert!(
            check(&err),
            "unexpected error for {flag_list:?} {env_pairs:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(text), "message {message:?} lacks {text:?}");
    }
}

// Goal: a member may list several peer URLs by repeating its name, as etcd allows, and
// they must equal its advertised peer URLs. Method: two URLs for one member.
#[test]
fn member_with_several_peer_urls() {
    let config = resolve(
        &[
            "--name",
            "a",
            "--initial-advertise-peer-urls",
            "http://10.0.0.2:2380,http://10.0.0.1:2380",
            "--initial-cluster",
            "a=http://10.0.0.1:2380,a=http://10.0.0.2:2380,b=http://10.0.0.3:2380",
        ],
        &[],
        None,
    )
    .expect("valid");
    assert_eq!(config.initial_cluster["a"].len(), 2);
    assert_eq!(
        config.initial_cluster["b"],
        vec![url("http://10.0.0.3:2380")]
    );
}

// Goal: environment variables that are not options do not disturb resolution.
// Method: resolve with unrelated and near-miss variables set.
#[test]
fn unrelated_environment_is_ignored() {
    let config = resolve(&[], &[("PATH", "/bin"), ("CHORUS_UNKNOWN", "x")], None).expect("valid");
    assert_eq!(config.name, "default");
}

// Goal: the flag names are exactly etcd's. Method: parse every flag once by its name.
#[test]
fn every_option_is_a_flag_with_its_etcd_name() {
    for option in OPTION_NAMES {
        let flag = format!("--{option}");
        let parsed = Serve::try_parse_from(["serve", flag.as_str(), "1"]);
        assert!(parsed.is_ok(), "{flag}: {:?}", parsed.err());
        assert_eq!(parsed.unwrap().args.given().len(), 1, "{flag}");
    }
}

// Goal: member and cluster ids are the same on every member, differ between members and
// between clusters with another token, and are never 0. Method: resolve the configuration of
// each member of a three-member cluster and compare the ids they compute.
#[test]
fn member_and_cluster_ids_agree_across_members() {
    let cluster = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380";
    let member = |name: &str, ip: &str, token: &str| {
        let peer = format!("http://{ip}:2380");
        resolve(
            &[
                "--name",
                name,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                cluster,
                "--initial-cluster-token",
                token,
            ],
            &[],
            None,
        )
        .expect("valid")
    };
    let configs = [
        member("a", "10.0.0.1", "t"),
        member("b", "10.0.0.2", "t"),
        member("c", "10.0.0.3", "t"),
    ];
    let ids = configs[0].initial_member_ids();
    assert_eq!(ids.len(), 3);
    for config in &configs {
        assert_eq!(config.initial_member_ids(), ids);
        assert_eq!(config.cluster_id(), configs[0].cluster_id());
        assert_eq!(config.member_id(), ids[&config.name]);
        assert_ne!(config.member_id().get(), 0);
    }
    let distinct: std::collections::BTreeSet<_> = ids.values().collect();
    assert_eq!(distinct.len(), 3, "members have distinct ids");
    let other = member("a", "10.0.0.1", "u");
    assert_ne!(
        other.cluster_id(),
        configs[0].cluster_id(),
        "the token separates clusters"
    );
    assert_ne!(other.member_id(), configs[0].member_id());
    // Pinned values: the ids are stored on disk, so the derivation must never change.
    // FNV-1a 64 of "a\0", computed independently of this code.
    assert_eq!(stable_id([b"a".as_slice()]), 0x089b_e207_b544_f1e4);
}

// Goal: etcd's watch progress interval flag takes a duration with a unit, defaults to ten
// minutes, and refuses zero and bare numbers. Method: resolve with each value.
#[test]
fn watch_progress_notify_interval_flag() {
    let flag = "--experimental-watch-progress-notify-interval";
    let interval =
        |value: &str| resolve(&[flag, value], &[], None).map(|c| c.watch_progress_notify_interval);
    assert_eq!(
        interval("250ms").unwrap(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        interval("1m30s").unwrap(),
        std::time::Duration::from_secs(90)
    );
    for bad in ["0s", "5", "soon"] {
        let error = interval(bad).expect_err(bad).to_string();
        assert!(
            error.contains("experimental-watch-progress-notify-interval"),
            "{error}"
        );
    }
}
