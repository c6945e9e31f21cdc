//! `cairn completions SHELL` and `cairn man`: shell completions and man pages generated from the
//! clap definitions themselves, so they never drift from the code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

use super::{say, Cli};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where the pages go (one per command: cairn.1, cairn-compose.1, cairn-vm-run.1, …).
    #[arg(long, default_value = "build/man")]
    pub out: PathBuf,
}

/// Print the completion script for a shell on stdout.
pub fn completions(a: CompletionsArgs) -> Result<()> {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
    Ok(())
}

/// Write a man page for `cairn` and each of its commands into `a.out`; print their paths.
pub fn man(a: ManArgs) -> Result<()> {
    fs_err::create_dir_all(&a.out)?;
    for p in write_pages(&Cli::command(), "cairn", &a.out)? {
        say(format_args!("{}", p.display()))?;
    }
    Ok(())
}

/// The page of `cmd` (named `name`) and of every subcommand below it.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let cmd = cmd.clone().name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    crate::base::tmp::write_atomic(&path, &buf)?;
    let mut out = vec![path];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        out.extend(write_pages(
            sub,
            &format!("{name}-{}", sub.get_name()),
            dir,
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_command() {
        let d = tempfile::tempdir().unwrap();
        let pages = write_pages(&Cli::command(), "cairn", d.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "cairn.1",
            "cairn-compose.1",
            "cairn-vm.1",
            "cairn-vm-run.1",
            "cairn-vm-test.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let compose = std::fs::read_to_string(d.path().join("cairn-compose.1")).unwrap();
        assert!(
            compose.contains("lockfile") && compose.contains(".TH"),
            "{compose}"
        );
    }
}
