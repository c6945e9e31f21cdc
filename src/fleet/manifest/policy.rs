//! `[policy]` of a fleet manifest: the strategy, the counts of nodes out, extra and serving
//! (resolved against the fleet's size and checked to be possible), the timeouts and what a
//! failure does.

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use super::{duration, OnFailure, Policy, Provider, Strategy};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPolicy {
    strategy: Option<String>,
    max_unavailable: Option<toml::Value>,
    max_surge: Option<toml::Value>,
    min_healthy: Option<toml::Value>,
    bake_time: Option<String>,
    drain_timeout: Option<String>,
    node_timeout: Option<String>,
    on_failure: Option<String>,
}

/// The counts of a policy, resolved.
struct Counts {
    max_unavailable: u32,
    max_surge: u32,
    min_healthy: u32,
}

/// The policy of a fleet of `size` nodes from `provider`; defaults without the table.
pub(super) fn policy(
    raw: Option<Spanned<RawPolicy>>,
    size: u32,
    provider: &Provider,
    at: &dyn Fn(usize) -> String,
    file: &str,
) -> Result<Policy> {
    let (p_at, p) = match raw {
        Some(p) => (at(p.span().start), p.into_inner()),
        None => (file.to_string(), RawPolicy::default()),
    };
    let strategy = match p.strategy.as_deref() {
        None => Strategy::InPlace,
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            anyhow!("{p_at}: key `policy.strategy`: {s:?} is not `in-place` or `replace`")
        })?,
    };
    let c = counts(&p, strategy, size, &p_at)?;
    check_provider(strategy, c.max_surge, provider, &p_at)?;
    let on_failure = match p.on_failure.as_deref() {
        None | Some("halt") => OnFailure::Halt,
        Some("rollback") => OnFailure::Rollback,
        Some(other) => {
            bail!("{p_at}: key `policy.on-failure`: {other:?} is not `halt` or `rollback`")
        }
    };
    let dur = |v: &Option<String>, key: &str, default: u64| {
        duration(v, &p_at, &format!("policy.{key}"), default, "30s")
    };
    Ok(Policy {
        strategy,
        max_unavailable: c.max_unavailable,
        max_surge: c.max_surge,
        min_healthy: c.min_healthy,
        bake_time: dur(&p.bake_time, "bake-time", 10)?,
        drain_timeout: dur(&p.drain_timeout, "drain-timeout", 60)?,
        node_timeout: dur(&p.node_timeout, "node-timeout", 1200)?,
        on_failure,
    })
}

/// `max-unavailable`, `max-surge` and `min-healthy`, checked to leave nodes serving.
fn counts(p: &RawPolicy, strategy: Strategy, size: u32, p_at: &str) -> Result<Counts> {
    let resolve = |v: &Option<toml::Value>, key: &str, default: u32, up: bool| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(v) => count(v, size, up).ok_or_else(|| {
                anyhow!(
                    "{p_at}: key `policy.{key}`: {v} is not a count or a percentage like \"25%\""
                )
            }),
        }
    };
    let max_unavailable = resolve(&p.max_unavailable, "max-unavailable", 1, false)?;
    let max_surge = resolve(&p.max_surge, "max-surge", 0, true)?;
    if max_unavailable == 0 && (strategy == Strategy::InPlace || max_surge == 0) {
        let v = p
            .max_unavailable
            .as_ref()
            .map_or("0".into(), |v| v.to_string());
        bail!(
            "{p_at}: key `policy.max-unavailable`: {v} of {size} nodes is 0, and a rollout that \
             takes no node out {}: give at least 1",
            if strategy == Strategy::InPlace {
                "in place never starts"
            } else {
                "nor adds one (max-surge = 0) never starts"
            }
        );
    }
    let min_healthy = resolve(&p.min_healthy, "min-healthy", 0, true)?;
    if max_unavailable >= size {
        bail!(
            "{p_at}: key `policy.max-unavailable`: {max_unavailable} would take all {size} nodes \
             out of service at once"
        );
    }
    if p.min_healthy.is_some() && size - max_unavailable < min_healthy {
        bail!(
            "{p_at}: key `policy.max-unavailable`: {max_unavailable} of {size} nodes out leaves \
             fewer than `min-healthy` ({min_healthy}) serving"
        );
    }
    Ok(Counts {
        max_unavailable,
        max_surge,
        min_healthy,
    })
}

/// A surge and the `replace` strategy need a provider that creates nodes.
fn check_provider(
    strategy: Strategy,
    max_surge: u32,
    provider: &Provider,
    p_at: &str,
) -> Result<()> {
    if max_surge > 0 && !provider.can_create() {
        bail!(
            "{p_at}: key `policy.max-surge`: the {} provider cannot create nodes",
            provider.kind()
        );
    }
    if strategy == Strategy::Replace && !provider.can_create() {
        bail!(
            "{p_at}: key `policy.strategy`: `replace` needs a provider that creates nodes, not {}",
            provider.kind()
        );
    }
    Ok(())
}

/// A count of nodes, or a percentage of the fleet.
fn count(v: &toml::Value, n: u32, round_up: bool) -> Option<u32> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => u32::try_from(*i).ok(),
        toml::Value::String(s) => {
            let p: u64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
            if p > 100 {
                return None;
            }
            let num = u64::from(n) * p;
            let c = if round_up {
                num.div_ceil(100)
            } else {
                num / 100
            };
            u32::try_from(c).ok()
        }
        _ => None,
    }
}
