//! The `in-place` strategy: each node is drained, upgraded (`cairn node upgrade`/`rebase`),
//! rebooted into the new commit, verified by its own verdict and its service's health, put
//! back into the load balancer and baked; up to `max-unavailable` nodes at a time.

use super::{Act, Next, Strategy};
use crate::fleet::manifest::Policy;
use crate::fleet::state::{Node, NodeStep, Role, Rollout};

pub struct InPlace;

impl Strategy for InPlace {
    /// Pending nodes (in order), as many as the policy lets go out of service now.
    fn next(&self, r: &Rollout, policy: &Policy, _size: u32) -> Next {
        let room = (policy.max_unavailable as usize).saturating_sub(r.out_of_service());
        let batch: Vec<String> = r
            .nodes
            .iter()
            .filter(|n| n.step == NodeStep::Pending && n.role == Role::Existing)
            .take(room)
            .map(|n| n.name.clone())
            .collect();
        if batch.is_empty() {
            Next::Done
        } else {
            Next::Begin(batch)
        }
    }

    fn act(&self, n: &Node) -> Act {
        match &n.step {
            NodeStep::Draining => Act::Drain {
                then: NodeStep::Upgrading,
            },
            NodeStep::Upgrading => Act::Deploy,
            NodeStep::Rebooting { boot_id } => Act::Reboot {
                boot_id: boot_id.clone(),
            },
            NodeStep::Verifying { boot_id } => Act::Verify {
                boot_id: boot_id.clone(),
                then: NodeStep::Baking,
            },
            NodeStep::Baking => Act::Bake,
            NodeStep::Pending | NodeStep::Done | NodeStep::Reverted | NodeStep::Removed => {
                Act::Stop
            }
            NodeStep::Failed { reason, .. } => Act::Failed(reason.clone()),
            NodeStep::Creating | NodeStep::Joining | NodeStep::Removing => Act::Unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{policy, rollout};
    use super::*;
    use crate::fleet::manifest::Strategy as Kind;

    fn r(steps: &[NodeStep]) -> Rollout {
        let names: Vec<String> = (0..steps.len()).map(|i| format!("n{i}")).collect();
        let nodes: Vec<(&str, Role, NodeStep)> = names
            .iter()
            .zip(steps)
            .map(|(n, s)| (n.as_str(), Role::Existing, s.clone()))
            .collect();
        rollout(Kind::InPlace, &nodes)
    }

    fn begin(names: &[&str]) -> Next {
        Next::Begin(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn batches_never_exceed_max_unavailable() {
        use NodeStep::*;
        let next = |r: &Rollout, mu| InPlace.next(r, &policy(mu, 0), 3);
        let all = r(&[Pending, Pending, Pending]);
        assert_eq!(next(&all, 1), begin(&["n0"]));
        assert_eq!(next(&all, 2), begin(&["n0", "n1"]));
        // One node out (a resumed rollout, or a failed node out of service): room for none.
        assert_eq!(next(&r(&[Draining, Pending, Pending]), 1), Next::Done);
        let failed = Failed {
            reason: "x".into(),
            rolled_back: false,
            in_service: false,
        };
        assert_eq!(
            next(&r(&[failed, Pending, Pending]), 1),
            Next::Done,
            "a dead node still counts as out"
        );
        let back = Failed {
            reason: "x".into(),
            rolled_back: true,
            in_service: true,
        };
        assert_eq!(next(&r(&[back, Done, Pending]), 1), begin(&["n2"]));
        assert_eq!(next(&r(&[Done, Done, Baking]), 1), Next::Done);
    }

    #[test]
    fn each_step_leads_to_the_next_and_a_new_node_is_no_in_place_step() {
        use NodeStep::*;
        let act = |s: NodeStep| InPlace.act(&r(&[s]).nodes[0]);
        assert_eq!(act(Draining), Act::Drain { then: Upgrading });
        assert_eq!(act(Upgrading), Act::Deploy);
        assert_eq!(
            act(Verifying {
                boot_id: "b".into()
            }),
            Act::Verify {
                boot_id: "b".into(),
                then: Baking
            }
        );
        assert_eq!(act(Baking), Act::Bake);
        assert_eq!(act(Done), Act::Stop);
        assert_eq!(act(Creating), Act::Unexpected);
    }
}
