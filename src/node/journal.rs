//! One journal line per transition of the node, with a fixed `MESSAGE_ID`, so that
//! `journalctl MESSAGE_ID=de6a40ceed9d4a5aa287605c0ba23b2c` lists every trial, verdict and
//! rollback across boots (the persistent journal also keeps each trial boot's own log).
//!
//! Lines go to journald's native socket (fields `MESSAGE`, `MESSAGE_ID`, `PRIORITY`,
//! `SYSLOG_IDENTIFIER=cairn-node`, `CAIRN_EVENT`), and to the log on stderr where there is no
//! journal.

use std::os::unix::net::UnixDatagram;

/// The id of every line the node writes.
pub const MESSAGE_ID: &str = "de6a40ceed9d4a5aa287605c0ba23b2c";
const SOCKET: &str = "/run/systemd/journal/socket";

/// How much a line matters (syslog's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// The datagram for one line: `KEY=value` fields, one per line (newlines in the message become
/// spaces: the simple form of the protocol takes no newline in a value).
pub fn datagram(level: Level, event: &str, message: &str) -> Vec<u8> {
    let flat = |s: &str| s.replace('\n', " ");
    format!(
        "MESSAGE={}\nMESSAGE_ID={MESSAGE_ID}\nPRIORITY={}\nSYSLOG_IDENTIFIER=cairn-node\nCAIRN_EVENT={}\n",
        flat(message),
        level as u8,
        flat(event)
    )
    .into_bytes()
}

/// Note a transition (`event`, a short kebab-case name) in the journal and the log. Once the
/// journal has it, the log shows it only with `-v` (a command prints its own result).
pub fn note(level: Level, event: &str, message: &str) {
    let sent = UnixDatagram::unbound()
        .and_then(|s| s.send_to(&datagram(level, event, message), SOCKET))
        .is_ok();
    match (sent, level) {
        (true, _) => tracing::debug!("{message}"),
        (false, Level::Warning) => tracing::warn!("{message}"),
        (false, Level::Notice | Level::Info) => tracing::info!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_field_per_line() {
        let d = String::from_utf8(datagram(Level::Warning, "fell-back", "a\nb")).unwrap();
        assert_eq!(
            d,
            "MESSAGE=a b\nMESSAGE_ID=de6a40ceed9d4a5aa287605c0ba23b2c\nPRIORITY=4\n\
             SYSLOG_IDENTIFIER=cairn-node\nCAIRN_EVENT=fell-back\n"
        );
    }
}
