//! /var in OSTree's layout: a commit's /var is empty, and what packages put there is recreated at
//! boot from tmpfiles.d entries (directories with owner and mode, symlinks). `/home`, `/root`,
//! `/opt`, `/srv` and `/mnt` become links into /var, and packages' tmpfiles.d entries follow them.

use std::path::Path;

use anyhow::{Context, Result};
use cap_std::fs::{Dir, MetadataExt, Permissions, PermissionsExt};
use cap_std_ext::dirext::CapStdExtDirExt;

use super::{remove_any, VAR_TMPFILES};

/// `/home`, `/root`, `/opt`, `/srv` and `/mnt` become links into /var; what packages or `useradd`
/// put there moves along, so that its directories are recreated at boot like the rest of /var.
pub(super) fn links_into_var(root: &Dir) -> Result<()> {
    const INTO_VAR: [(&str, &str, u32); 5] = [
        ("home", "var/home", 0o755),
        ("root", "var/roothome", 0o700),
        ("opt", "var/opt", 0o755),
        ("srv", "var/srv", 0o755),
        ("mnt", "var/mnt", 0o755),
    ];
    for (link, target, mode) in INTO_VAR {
        match root.symlink_metadata(link) {
            Ok(m) if m.is_dir() && !root.exists(target) => {
                root.rename(link, root, target)
                    .with_context(|| format!("moving /{link} to /{target}"))?;
            }
            Ok(_) => remove_any(root, link)?,
            Err(_) => {}
        }
        if !root.exists(target) {
            root.create_dir_all(target)?;
            root.set_permissions(target, Permissions::from_mode(mode))?;
        }
        root.symlink(target, link)?;
    }
    rewrite_tmpfiles(root, &INTO_VAR.map(|(l, t, _)| (l, t)))
}

/// Everything in /var becomes tmpfiles.d entries (in [`VAR_TMPFILES`]), and /var is emptied.
pub(super) fn as_tmpfiles(root: &Dir) -> Result<()> {
    let mut entries = Vec::new();
    walk_var(root, Path::new("var"), &mut entries)?;
    entries.push("L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg".to_string());
    entries.sort();
    entries.dedup();
    remove_any(root, "var")?;
    root.create_dir_all("var")?;
    let mut conf =
        String::from("# Made by cairn compose: what packages put into /var, recreated at boot.\n");
    for e in &entries {
        conf.push_str(e);
        conf.push('\n');
    }
    root.create_dir_all("usr/lib/tmpfiles.d")?;
    root.write(VAR_TMPFILES, conf)?;
    Ok(())
}

/// Packages' tmpfiles.d entries for `/home`, `/root`, `/srv`, … now name links: point them at
/// the directories in `/var` the links lead to (so `/root/.ssh` becomes `/var/roothome/.ssh`),
/// instead of letting systemd-tmpfiles fail on "already exists and is not a directory".
fn rewrite_tmpfiles(root: &Dir, moved: &[(&str, &str)]) -> Result<()> {
    let dir = "usr/lib/tmpfiles.d";
    let Ok(entries) = root.read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".conf") || format!("{dir}/{name}") == VAR_TMPFILES {
            continue;
        }
        let path = format!("{dir}/{name}");
        if !root.symlink_metadata(&path)?.is_file() {
            continue;
        }
        let text = root.read_to_string(&path)?;
        let out = rewrite_tmpfiles_text(&text, moved);
        if out != text {
            root.atomic_write(&path, out)
                .with_context(|| format!("rewriting /{path}"))?;
        }
    }
    Ok(())
}

fn rewrite_tmpfiles_text(text: &str, moved: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let rewritten = match (fields.next(), fields.next()) {
            (Some(kind), Some(path)) if !kind.starts_with('#') => {
                moved.iter().find_map(|(link, target)| {
                    let link = format!("/{link}");
                    let rest = path.strip_prefix(&link)?;
                    (rest.is_empty() || rest.starts_with('/')).then(|| {
                        let at = line.find(path).unwrap_or(0);
                        format!("{}/{target}{rest}{}", &line[..at], &line[at + path.len()..])
                    })
                })
            }
            _ => None,
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Record `/var` as tmpfiles.d lines: directories (with owner and mode) and symlinks.
fn walk_var(root: &Dir, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in root.read_dir(rel)? {
        let e = e?;
        let path = rel.join(e.file_name());
        let m = root.symlink_metadata(&path)?;
        let p = format!("/{}", path.display());
        if p == "/var/lib/dpkg" {
            continue;
        }
        if m.is_symlink() {
            let target = root.read_link_contents(&path)?;
            out.push(format!("L {p} - - - - {}", target.display()));
        } else if m.is_dir() {
            out.push(format!(
                "d {p} {:04o} {} {} - -",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
            walk_var(root, &path, out)?;
        } else {
            tracing::debug!("dropping {p} from /var (packages' /var content is not kept)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfiles_entries_follow_the_moved_directories() {
        let moved = [
            ("home", "var/home"),
            ("root", "var/roothome"),
            ("srv", "var/srv"),
        ];
        let text = "# c\nQ /home 0755 - - -\nq /srv 0755 - - -\nd- /root/.ssh :0700 root :root -\nd /homework 0755\nL /var/x - - - - /root\n";
        let out = rewrite_tmpfiles_text(text, &moved);
        assert!(out.contains("Q /var/home 0755 - - -"), "{out}");
        assert!(out.contains("q /var/srv 0755"), "{out}");
        assert!(
            out.contains("d- /var/roothome/.ssh :0700 root :root -"),
            "{out}"
        );
        assert!(
            out.contains("d /homework 0755"),
            "only whole path components: {out}"
        );
        assert!(
            out.contains("L /var/x - - - - /root"),
            "arguments are left alone: {out}"
        );
        assert!(out.starts_with("# c\n"));
    }
}
