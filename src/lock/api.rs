//! The lock service's wire contract, defined once for the server, cairn's client and the CLI:
//! FleetLock v1 as Zincati speaks it (`POST /v1/pre-reboot` and `/v1/steady-state` with
//! `{"client_params":{"id","group"}}`, the `fleet-lock-protocol: true` header, errors as
//! `{"kind","value"}`), and cairn's extensions, which a Zincati client never sends and so never
//! sees: the fencing token of a grant, health reports, the status of every group and the
//! operator's actions. Every answer that cairn adds carries a `version`.

use serde::{Deserialize, Serialize};

/// The header every FleetLock request carries, with the value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";
/// The version of cairn's own answers (grants, status, …).
pub const VERSION: u32 = 1;

/// Who asks: FleetLock's `client_params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The node's identifier (Zincati: its app-specific machine id), case-sensitive.
    pub id: String,
    /// Its reboot group (`^[a-zA-Z0-9.-]+$`; Zincati's default is `default`).
    pub group: String,
}

impl ClientParams {
    /// The protocol's rules for the two fields: an error saying which is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > 253 || self.id.chars().any(char::is_control) {
            return Err(format!(
                "client_params.id {:?} must be 1 to 253 printable characters",
                self.id
            ));
        }
        if !valid_group(&self.group) {
            return Err(format!(
                "client_params.group {:?} must match ^[a-zA-Z0-9.-]+$ (at most 63 characters)",
                self.group
            ));
        }
        Ok(())
    }
}

/// Does a group name follow the protocol's pattern (and fit a key)?
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 63
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// The body of `pre-reboot` and `steady-state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub client_params: ClientParams,
    /// cairn's extension: the fencing token of the grant the client believes it holds. On
    /// `pre-reboot` the server renews that grant or answers `lease_lost`; it never grants a
    /// new slot to a request that names an old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
}

/// A node's verdict on its boot, for `POST /v1/report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The new deployment booted and passed its health checks.
    Healthy,
    /// The new deployment failed and the node went back to its previous one.
    RolledBack,
    /// The update failed before it booted (download, deploy).
    Failed,
}

impl Verdict {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::RolledBack => "rolled-back",
            Verdict::Failed => "failed",
        }
    }

    pub fn is_bad(self) -> bool {
        !matches!(self, Verdict::Healthy)
    }
}

/// The body of `POST /v1/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    pub client_params: ClientParams,
    pub verdict: Verdict,
    /// What the node saw (the failed check, the deployment).
    #[serde(default)]
    pub reason: String,
}

/// A held slot, as `pre-reboot` answers it and the status lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderStatus {
    pub id: String,
    /// Grows with every grant the service makes: a node checks that the token it was given is
    /// still its own (`pre-reboot` with `fencing_token`) right before it reboots.
    pub fencing_token: u64,
    /// Milliseconds since the epoch: granted, last renewed, lost unless renewed before.
    pub since_ms: i64,
    pub renewed_ms: i64,
    pub expires_ms: i64,
}

/// The answer of a successful `pre-reboot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub version: u32,
    pub group: String,
    #[serde(flatten)]
    pub holder: HolderStatus,
    /// The node held this slot already: the grant was renewed.
    pub renewed: bool,
    /// Renew (call `pre-reboot` again) within this many milliseconds to keep the slot.
    pub renew_interval_ms: u64,
}

/// The answer of `steady-state` and of the operator's release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub version: u32,
    pub group: String,
    pub id: String,
    /// The slot that was freed; `None` when the node held none (a release is idempotent).
    pub fencing_token: Option<u64>,
}

/// Why a group grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    pub reason: String,
    /// The node that reported, or the operator.
    pub by: String,
    pub at_ms: i64,
    /// The verdict of the report that halted the group; `None` for an operator's halt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// What a node's update agent is doing, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentPhase {
    /// On the newest release open to it.
    Steady,
    /// A release is open to it; waiting for leave (a window, a slot).
    Waiting,
    /// Holding its leave: deploying, rebooting.
    Updating,
    /// Booted after an update, waiting for the verdict.
    Verifying,
    /// On a dead-end release.
    DeadEnd,
    /// Unhealthy, or an update failed.
    Failed,
}

impl AgentPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentPhase::Steady => "steady",
            AgentPhase::Waiting => "waiting",
            AgentPhase::Updating => "updating",
            AgentPhase::Verifying => "verifying",
            AgentPhase::DeadEnd => "dead-end",
            AgentPhase::Failed => "failed",
        }
    }
}

/// `POST /v1/node-report`: a node's update agent says where it is (kept per group and node,
/// the last one wins), for the fleet-wide view of `cairn rollout status --ref`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub client_params: ClientParams,
    pub commit: String,
    /// The booted commit's version.
    pub release: Option<String>,
    pub phase: AgentPhase,
    pub wariness: f64,
    /// immediate, periodic, fleet-lock.
    pub strategy: String,
    /// The version it is going to, if any.
    #[serde(default)]
    pub target: Option<String>,
    pub message: String,
    /// When the service stored it (set by the service).
    #[serde(default)]
    pub at_ms: i64,
}

/// One group in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub slots: u32,
    pub holders: Vec<HolderStatus>,
    pub halted: Option<Halt>,
    /// The last report of each node of the group, by id.
    #[serde(default)]
    pub nodes: Vec<NodeReport>,
}

/// `GET /v1/status` and `cairn lock status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: u32,
    /// The server that answered.
    pub server: String,
    /// `etcd` or `embedded`.
    pub store: String,
    pub lease_ttl_ms: u64,
    pub groups: Vec<GroupStatus>,
}

/// `POST /v1/operator/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRelease {
    pub group: String,
    pub id: String,
}

/// `POST /v1/operator/halt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorHalt {
    pub group: String,
    pub reason: String,
}

/// `POST /v1/operator/clear`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClear {
    pub group: String,
}

/// The answer of halt and clear: the group's halt after the action, and the one before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltChange {
    pub version: u32,
    pub group: String,
    pub halted: Option<Halt>,
    pub was: Option<Halt>,
}

/// The kinds of error, a small fixed set as the protocol asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Every slot of the group is held.
    FailedLockSemaphoreFull,
    /// The group grants nothing until an operator clears it.
    GroupHalted,
    /// The grant the client named is gone (it expired, or an operator released it).
    LeaseLost,
    MissingProtocolHeader,
    BadRequest,
    /// No credential, or one that does not verify.
    Unauthenticated,
    /// A valid credential that may not do this (another node's slot, an operator action).
    Forbidden,
    NotFound,
    /// The store (etcd) did not answer.
    StoreUnavailable,
    /// The group's load balancer could not drain the node: no slot is given.
    LoadBalancerUnavailable,
}

impl ErrorKind {
    /// The HTTP status it is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::FailedLockSemaphoreFull | ErrorKind::GroupHalted | ErrorKind::LeaseLost => {
                409
            }
            ErrorKind::MissingProtocolHeader | ErrorKind::BadRequest => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::StoreUnavailable | ErrorKind::LoadBalancerUnavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::FailedLockSemaphoreFull => "failed_lock_semaphore_full",
            ErrorKind::GroupHalted => "group_halted",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::MissingProtocolHeader => "missing_protocol_header",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::LoadBalancerUnavailable => "load_balancer_unavailable",
        }
    }
}

/// FleetLock's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zincati_requests_parse_and_errors_have_the_protocols_shape() {
        let body =
            r#"{"client_params":{"group":"default","id":"c988d2509fdf5cdcbed39037c56406fb"}}"#;
        let r: LockRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.client_params.group, "default");
        assert_eq!(r.fencing_token, None);
        r.client_params.check().unwrap();
        let e = ErrorBody {
            kind: ErrorKind::FailedLockSemaphoreFull,
            value: "full".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], e.kind.as_str());
        for v in [Verdict::Healthy, Verdict::RolledBack, Verdict::Failed] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for kind in [ErrorKind::GroupHalted, ErrorKind::StoreUnavailable] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn group_names_follow_the_protocols_pattern() {
        assert!(valid_group("workers.eu-1"));
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(64)] {
            assert!(!valid_group(bad), "{bad:?}");
        }
        let p = ClientParams {
            id: String::new(),
            group: "default".into(),
        };
        assert!(p.check().unwrap_err().contains("client_params.id"));
    }
}
