//! Releases end to end, without a VM (needs root, the build host's apt sources, gpg and the
//! `ostree` CLI): two signed composes of a small layer on the shipped base, served over HTTP by
//! `cairn repo serve` to client repos made with the `ostree` CLI that verify signatures; a
//! promotion, a prune, a retirement, the audit log, and bad input that changes nothing. One
//! chain of named steps (`../chain`) over one repo: each step is a test of its own,
//! `release::NAME` (`cargo test --test scenarios release::NAME` runs the steps before it first), and a step
//! after a failed one fails naming the first failure.
//!
//! - [`publish`]: the signed composes, the server, the clients and the node that verify them;
//! - [`lifecycle`]: promote, prune, retire, the audit log, and the bad input around them.

mod lifecycle;
mod publish;

use std::path::PathBuf;

use crate::chain::{Chain, Step};
use crate::release_world::{self, new_key, World};
use serde_json::Value;

/// The stable ref the release is promoted to, and retired.
const STABLE: &str = "test/amd64/rel-stable";

/// The repo and its keys, and what the steps found that later ones check against.
pub struct Rel {
    /// First, so that it goes first: the server and the GPG agents stop before their files go.
    w: World,
    _work: tempfile::TempDir,
    /// GPG homes under /tmp: gpg-agent's socket path must stay short.
    homes: tempfile::TempDir,
    /// The release key's fingerprint and public key file; another key nodes do not trust.
    fpr: String,
    public: PathBuf,
    other: String,
    /// Set by the steps that make them: base's and the layer's two commits, the server's URL,
    /// the client that pulls through it, the dry run's answer.
    base: String,
    v1: String,
    v2: String,
    url: String,
    client: PathBuf,
    dry: Value,
}

impl Rel {
    /// The repo, its cache, and the keys: the release key, and another one nodes do not trust.
    fn new() -> Self {
        assert!(nix::unistd::geteuid().is_root(), "composing needs root");
        let work = tempfile::Builder::new()
            .prefix("cairn-rel-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let homes = tempfile::Builder::new()
            .prefix("crk")
            .tempdir_in("/tmp")
            .unwrap();
        let w = World {
            work: work.path().to_path_buf(),
            repo: work.path().join("repo"),
            cache: work.path().join("cache"),
            homes: vec![homes.path().join("k"), homes.path().join("o")],
            server: None,
        };
        let (fpr, public) = new_key(&w.homes[0], "cairn release test");
        let (other, _) = new_key(&w.homes[1], "someone else");
        assert!(public.is_file());
        Rel {
            w,
            _work: work,
            homes,
            fpr,
            public,
            other,
            base: String::new(),
            v1: String::new(),
            v2: String::new(),
            url: String::new(),
            client: PathBuf::new(),
            dry: Value::Null,
        }
    }

    /// The layer's treefile's git checkout.
    fn tfdir(&self) -> PathBuf {
        self.w.work.join("tf")
    }
}

fn steps() -> Vec<Step<Rel>> {
    steps![
        publish::a_missing_signing_key_is_refused_before_anything_is_written,
        publish::v1_is_composed_with_where_it_came_from,
        publish::serve_refuses_a_directory_that_is_not_a_repo,
        publish::a_client_trusting_the_release_key_pulls_v1,
        publish::v2_is_signed_and_reaches_the_client_through_a_static_delta,
        publish::unsigned_and_other_keys_commits_are_refused,
        publish::a_deployed_node_trusts_the_manifests_key_only,
        lifecycle::promote_writes_a_signed_commit_of_the_same_tree,
        lifecycle::promote_refuses_unsigned_missing_and_unrelated_refs,
        lifecycle::prune_sign_and_retire_refuse_bad_input_changing_nothing,
        lifecycle::an_expired_key_cannot_sign,
        lifecycle::a_prune_dry_run_lists_v1_and_changes_nothing,
        lifecycle::prune_removes_v1_and_its_delta_and_what_is_kept_still_pulls,
        lifecycle::the_log_reader_skips_a_line_cut_short,
        lifecycle::retire_marks_the_end_of_life_that_clients_pull,
        lifecycle::the_audit_log_has_one_line_per_step_in_order,
        lifecycle::the_log_of_a_ref_tells_who_built_it_and_its_promotion,
    ]
}

/// The release chain.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    Chain::niced("release", Rel::new, steps(), 10).trials()
}
