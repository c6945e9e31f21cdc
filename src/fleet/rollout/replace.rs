//! The `replace` strategy: new nodes from the newest image take the old nodes' places.
//!
//! A new node is created (booted from the image), verified (its own verdict and its service's
//! health), joins the load balancer and bakes; an old node is drained, then removed from the
//! load balancer and discarded. While more nodes serve than the fleet's size (new ones made
//! ahead), old ones are removed; otherwise up to `max-surge` new ones are made (or, without a
//! surge, up to `max-unavailable` old ones are removed first and then replaced).

use super::{Act, Next, Strategy};
use crate::fleet::manifest::Policy;
use crate::fleet::state::{Node, NodeStep, Role, Rollout};

pub struct Replace;

impl Strategy for Replace {
    fn next(&self, r: &Rollout, policy: &Policy, size: u32) -> Next {
        let old: Vec<&Node> = r
            .nodes
            .iter()
            .filter(|n| n.role == Role::Existing && n.step == NodeStep::Pending)
            .collect();
        if old.is_empty() {
            return Next::Done;
        }
        let new_serving = r
            .nodes
            .iter()
            .filter(|n| n.role == Role::New && n.step == NodeStep::Done)
            .count() as u32;
        let serving = old.len() as u32 + new_serving;
        let remove = |k: u32| {
            Next::Begin(
                old.iter()
                    .take(k.min(old.len() as u32) as usize)
                    .map(|n| n.name.clone())
                    .collect(),
            )
        };
        if serving > size {
            return remove(serving - size);
        }
        if policy.max_surge > 0 {
            return Next::Create(policy.max_surge.min(old.len() as u32));
        }
        if serving == size {
            return remove(policy.max_unavailable);
        }
        Next::Create(size - serving)
    }

    fn act(&self, n: &Node) -> Act {
        match (n.role, &n.step) {
            (_, NodeStep::Failed { reason, .. }) => Act::Failed(reason.clone()),
            (Role::New, NodeStep::Creating) => Act::Create,
            (Role::New, NodeStep::Verifying { boot_id }) => Act::Verify {
                boot_id: boot_id.clone(),
                then: NodeStep::Joining,
            },
            (Role::New, NodeStep::Joining) => Act::Join,
            (Role::New, NodeStep::Baking) => Act::Bake,
            (Role::Existing, NodeStep::Draining) => Act::Drain {
                then: NodeStep::Removing,
            },
            (Role::Existing, NodeStep::Removing) => Act::Remove,
            (_, NodeStep::Pending | NodeStep::Done | NodeStep::Removed | NodeStep::Reverted) => {
                Act::Stop
            }
            _ => Act::Unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{policy, rollout};
    use super::*;
    use crate::fleet::manifest::Strategy as Kind;
    use NodeStep::*;
    use Role::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn surge_makes_new_nodes_before_removing_old_ones() {
        let next = |nodes: &[(&str, Role, NodeStep)], surge| {
            Replace.next(&rollout(Kind::Replace, nodes), &policy(1, surge), 3)
        };
        let start = [
            ("a", Existing, Pending),
            ("b", Existing, Pending),
            ("c", Existing, Pending),
        ];
        assert_eq!(next(&start, 1), Next::Create(1));
        let mut one_new = start.to_vec();
        one_new.push(("d", New, Done));
        assert_eq!(next(&one_new, 1), Next::Begin(names(&["a"])));
        let done = [
            ("a", Existing, Removed),
            ("b", Existing, Removed),
            ("c", Existing, Removed),
            ("d", New, Done),
            ("e", New, Done),
            ("f", New, Done),
        ];
        assert_eq!(next(&done, 1), Next::Done);
        // Without a surge: remove first (within max-unavailable), then replace.
        assert_eq!(next(&start, 0), Next::Begin(names(&["a"])));
        let gap = [
            ("a", Existing, Removed),
            ("b", Existing, Pending),
            ("c", Existing, Pending),
        ];
        assert_eq!(next(&gap, 0), Next::Create(1));
    }

    #[test]
    fn new_nodes_create_verify_join_bake_and_old_ones_drain_then_go() {
        let act = |role, step: NodeStep| {
            Replace.act(&rollout(Kind::Replace, &[("n", role, step)]).nodes[0])
        };
        assert_eq!(act(New, Creating), Act::Create);
        assert_eq!(
            act(
                New,
                Verifying {
                    boot_id: String::new()
                }
            ),
            Act::Verify {
                boot_id: String::new(),
                then: Joining
            }
        );
        assert_eq!(act(New, Joining), Act::Join);
        assert_eq!(act(New, Baking), Act::Bake);
        assert_eq!(act(Existing, Draining), Act::Drain { then: Removing });
        assert_eq!(act(Existing, Removing), Act::Remove);
        assert_eq!(act(Existing, Removed), Act::Stop);
        // In-place steps are not replace's: a mixed-up state is an internal error, not a guess.
        assert_eq!(act(Existing, Upgrading), Act::Unexpected);
        assert_eq!(act(New, Draining), Act::Unexpected);
    }
}
