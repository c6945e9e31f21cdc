//! Real composes of the shipped treefiles from Debian packages (needs root and the build host's
//! apt sources, and for the images the tools `.ci/deps` installs). One chain of named steps
//! (`../chain`) over one world, so that they share composes: the base composed once from an
//! empty repo and cache, which the images, the lockfile, the layers and the killed compose all
//! start from; it is reproducible when it equals the base the boot tests' shared world composed
//! from its own empty repo and cache, and when the lockfile composes it again into a new repo.
//! Each step is a test of its own, `compose::NAME` (`cargo test --test scenarios
//! compose::NAME` runs the steps before it first), and a step after a failed one fails naming
//! the first failure.
//!
//! - [`base`]: the first compose, the no-op, the lockfile, the reproducible composes;
//! - [`image`]: disk images of the base commit;
//! - [`layers`]: bad packages, the app layer on blessed, its SBOMs and files, a failing script;
//! - [`killed`]: a compose SIGKILLed in the middle of its commit, and the one after it.

mod base;
mod env;
mod image;
mod killed;
mod layers;
mod layout;

use std::path::{Path, PathBuf};

use crate::chain::{Chain, Step};
use env::Env;

const BASE: &str = "treefiles/base.toml";
const BASE_REF: &str = "cairn/amd64/base";

/// The repos and caches the steps compose into, under one directory of `/var/tmp`.
pub struct World {
    work: tempfile::TempDir,
    /// The repo and cache of the first compose; the images, layers and the killed compose use
    /// them too.
    a: Env,
    /// The base commit of the first compose (set by its step, which every other one follows).
    c1: String,
    /// The app-example layer's commit (set by the step that composes it).
    app: String,
}

impl World {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "composing needs root (chroot, mounts)"
        );
        let work = tempfile::Builder::new()
            .prefix("cairn-it-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let a = Env::new(work.path(), "a");
        World {
            work,
            a,
            c1: String::new(),
            app: String::new(),
        }
    }

    fn path(&self) -> &Path {
        self.work.path()
    }

    /// A new repo with the first compose's cache: the lockfile composes.
    fn c(&self) -> Env {
        Env {
            repo: Env::new(self.path(), "c").repo,
            cache: self.a.cache.clone(),
        }
    }

    /// The lockfile written from the first compose's commit.
    fn lockfile(&self) -> PathBuf {
        self.path().join("base.lock.toml")
    }

    /// A directory for the steps' own treefiles.
    fn treefiles(&self) -> PathBuf {
        let d = self.path().join("tf");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `tf/NAME.toml`: a layer on the shipped base, on `ref_`, with one postprocess script.
    fn layer_on_base(&self, name: &str, ref_: &str, script: &str) -> PathBuf {
        let tf = self.treefiles().join(format!("{name}.toml"));
        std::fs::write(
            &tf,
            format!(
                "include = [\"{}\"]\nref = \"{ref_}\"\npostprocess = [\"{script}\"]\n",
                std::fs::canonicalize(BASE).unwrap().display()
            ),
        )
        .unwrap();
        tf
    }
}

fn steps() -> Vec<Step<World>> {
    steps![
        base::an_empty_repo_and_cache_compose_the_base,
        base::the_base_commit_follows_the_ostree_layout,
        image::the_shipped_manifest_refuses_a_host_without_cloud_init,
        image::the_base_disk_image_has_gpt_grub_and_a_hardlinked_kernel,
        image::the_same_commit_and_manifest_give_a_bit_identical_raw_image,
        base::the_same_inputs_compose_nothing,
        base::a_lockfile_is_written_from_the_commit,
        base::a_clean_repo_and_cache_give_the_same_commit,
        base::a_lockfile_compose_into_a_new_repo_gives_the_same_commit,
        base::a_lockfile_with_a_wrong_digest_is_refused_and_the_ref_stays,
        base::a_lockfile_missing_a_package_is_refused,
        layers::an_unknown_package_is_named_by_file_line_and_key,
        layers::a_layer_composes_on_its_parents_commit,
        layers::the_sbom_names_release_source_os_and_licenses,
        layers::both_sboms_of_a_real_commit_pass_their_validators,
        layers::the_app_layer_has_its_files_and_unchecked_hash_bytecode,
        layers::a_failing_postprocess_script_is_named_and_creates_no_ref,
        killed::a_compose_killed_in_its_commit_leaves_the_repo_consistent_and_the_ref_unchanged,
        killed::the_compose_after_a_killed_one_succeeds_with_the_next_version,
    ]
}

/// The compose chain.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    Chain::niced("compose", World::new, steps(), 10).trials()
}
