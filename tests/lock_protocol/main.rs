//! `cairn lock` end to end, against real processes: a `cairn lock serve` on the embedded store
//! and one on a single-member etcd cluster (Debian's `etcd`), each behaviour run against both
//! (`embedded::…`, `etcd::…`). The FleetLock wire protocol as Zincati sends it (the protocol
//! document's requests, by `curl`), cairn's own client and its fencing tokens, expiry of a
//! holder that stops renewing, the health gate (a bad report halts the group until an operator
//! clears it), authentication, live reconfiguration on SIGHUP, the operator's `cairn lock
//! status`, `/metrics`, restarts and concurrent requests; on etcd alone, two servers sharing one
//! cluster and an outage of etcd. The TTLs are short (3 s, renewal 1 s), and every wait is
//! bounded. `fixed_defects` pins the defects found in review.

#[path = "../lock_world/mod.rs"]
mod lock_world;

mod etcd_only;
mod fixed_defects;
mod gate;
mod leases;
mod operate;
mod pull;
mod wire;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cairn::lock::api::{ClientParams, ErrorKind, Grant, GroupStatus, Status, Verdict};
use cairn::lock::audit::{self, Action, AuditRecord};
use cairn::lock::auth::Secret;
use cairn::lock::client::{Client, ClientError};
use lock_world::{free_port, wait_for, Etcd, LockServer};
use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

use gate::*;
use leases::*;
use operate::*;
use wire::*;

/// The id in the FleetLock protocol document's example.
const ZINCATI_ID: &str = "c988d2509fdf5cdcbed39037c56406fb";
/// The configured TTL and renewal interval (the `[lock]` of every test's configuration).
const TTL: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);
const LOCK: &str = "[lock]\nlease-ttl = \"3s\"\nrenew-interval = \"1s\"\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Embedded,
    Etcd,
}

/// One `cairn lock serve` on its store, in a temporary directory. The server is declared
/// first, so it is killed before etcd and before the directory goes.
struct World {
    server: LockServer,
    etcd: Option<Etcd>,
    store: Store,
    /// The configuration without its `[lock]` (store, service, auth, audit).
    head: String,
    audit_log: PathBuf,
    dir: TempDir,
}

impl World {
    /// Start a server on `store` whose `[lock]` is [`LOCK`] followed by `groups`.
    fn start(store: Store, groups: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path();
        let service = format!("[service]\naddress = \"127.0.0.1\"\nport = {port}\n");
        let (etcd, head, audit_log) = match store {
            Store::Embedded => {
                // The secret and the audit log take their defaults, in the store's directory.
                let state = d.join("state");
                let head = format!("{service}[store]\npath = {:?}\n", state.to_str().unwrap());
                (None, head, state.join("audit.jsonl"))
            }
            Store::Etcd => {
                let etcd_dir = d.join("etcd");
                std::fs::create_dir(&etcd_dir).unwrap();
                let etcd = Etcd::start(&etcd_dir, 1);
                let secret = d.join("lock.secret");
                let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
                    .args(["lock", "secret"])
                    .arg(&secret)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "cairn lock secret: {out:?}");
                let audit_log = d.join("audit/lock-audit.jsonl");
                let endpoints = etcd
                    .endpoints()
                    .iter()
                    .map(|e| format!("{e:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let head = format!(
                    "{service}[etcd3]\nendpoints = [{endpoints}]\n[auth]\nsecret-file = {:?}\n\
                     [audit]\nlog = {:?}\n",
                    secret.to_str().unwrap(),
                    audit_log.to_str().unwrap()
                );
                (Some(etcd), head, audit_log)
            }
        };
        let server = LockServer::start(d, "lock", port, &format!("{head}{LOCK}{groups}"));
        World {
            server,
            etcd,
            store,
            head,
            audit_log,
            dir,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Write a new configuration: the same store and service, this `[lock]` section.
    fn rewrite_lock(&self, lock: &str) {
        std::fs::write(&self.server.config, format!("{}{lock}", self.head)).unwrap();
    }

    /// `cairn lock token --config CFG KIND NAME`.
    fn token(&self, kind: &str, name: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["lock", "token", "--config"])
            .arg(&self.server.config)
            .args([kind, name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn lock token {kind} {name}: {out:?}"
        );
        let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(t.starts_with(&format!("v1.{kind}.{name}.")), "{t}");
        t
    }

    fn client(&self, token: Option<String>) -> Client {
        Client::new(&self.url(), token)
    }

    /// A client with node `id`'s own token.
    fn node(&self, id: &str) -> Client {
        self.client(Some(self.token("node", id)))
    }

    /// A client with operator alice's token.
    fn operator(&self) -> Client {
        self.client(Some(self.token("operator", "alice")))
    }

    /// Run `cairn lock ARGS` against the server as operator alice.
    fn cairn(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("lock")
            .args(args)
            .env("CAIRN_LOCK_URL", self.url())
            .env("CAIRN_LOCK_TOKEN", self.token("operator", "alice"))
            .env_remove("CAIRN_LOCK_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn lock {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.log_text()
        );
        out
    }

    fn audit(&self) -> Vec<AuditRecord> {
        audit::read(&self.audit_log).unwrap()
    }

    /// `group` in the service's status.
    fn group(&self, op: &Client, group: &str) -> GroupStatus {
        let s = op.status().unwrap();
        assert_eq!(s.store, self.store_kind());
        s.groups
            .into_iter()
            .find(|g| g.name == group)
            .unwrap_or_else(|| panic!("no group {group} in the status"))
    }

    fn store_kind(&self) -> &'static str {
        match self.store {
            Store::Embedded => "embedded",
            Store::Etcd => "etcd",
        }
    }
}

fn params(group: &str, id: &str) -> ClientParams {
    ClientParams {
        id: id.into(),
        group: group.into(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A refusal's status and kind (panics on a success or a transport error).
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, ErrorKind, String) {
    match r {
        Err(ClientError::Refused {
            status,
            kind,
            value,
            ..
        }) => (status, kind, value),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn granted(r: Result<Grant, ClientError>) -> Grant {
    r.unwrap_or_else(|e| panic!("expected a grant: {e}"))
}

/// The records of `action` for `id` (any id when `None`) in `group`.
fn records<'a>(
    log: &'a [AuditRecord],
    action: Action,
    group: &str,
    id: Option<&str>,
) -> Vec<&'a AuditRecord> {
    log.iter()
        .filter(|r| {
            r.action == action && r.group == group && id.is_none_or(|i| r.id.as_deref() == Some(i))
        })
        .collect()
}

/// Each behaviour against each store, as its own test (`embedded::…`, `etcd::…`).
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $name() {
                super::$name(super::Store::Embedded)
            })*
        }
        mod etcd {
            $(#[test]
            fn $name() {
                super::$name(super::Store::Etcd)
            })*
        }
    };
}

both_stores!(
    zincati_requests_by_curl_take_renew_and_release_a_slot,
    cairns_client_takes_renews_and_releases_with_growing_fencing_tokens,
    a_holder_that_stops_renewing_loses_its_slot_after_the_ttl,
    a_rolled_back_node_halts_its_group_until_an_operator_clears_it,
    nodes_and_operators_act_only_with_their_own_tokens,
    sighup_applies_a_changed_slot_count_and_keeps_the_holders,
    cairn_lock_status_lists_the_holders_with_since_renewed_and_expires,
    metrics_are_prometheus_text_with_grants_and_holders,
    a_grant_survives_a_restart_of_the_server,
    concurrent_requests_never_grant_more_than_the_slots,
);
