//! Connection-tracking bypass for captured packets.
//!
//! kube-proxy's DNAT runs in PREROUTING, after tc. A captured SYN to a
//! service VIP would be rewritten to an endpoint although it is already
//! assigned to our listener, and the handshake hangs. Marked packets skip
//! conntrack (and so NAT), like Istio's node-level capture rules did.

use std::io::Write as _;
use std::process::{Command, Stdio};

use ambit_ebpf_common::{CAPTURE_MARK, CAPTURE_MARK_MASK};

use super::Error;

/// Our own table, so we never touch rules that others own.
const TABLE: &str = "ambit";

/// One nft transaction: create-if-absent, delete, recreate. Atomic and
/// idempotent; a restart replaces the table with the current rules.
fn ruleset() -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tmeta mark & {CAPTURE_MARK_MASK:#x} == {CAPTURE_MARK:#x} notrack\n\
         \t}}\n\
         }}\n"
    )
}

pub(super) fn ensure_conntrack_bypass() -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("cannot run `nft` (is nftables installed?): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset().as_bytes()).map_err(|e| Error::Nft(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| Error::Nft(e.to_string()))?;
    if !output.status.success() {
        return Err(Error::Nft(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ruleset_matches_the_capture_mark() {
        let rules = super::ruleset();
        assert!(rules.contains("meta mark & 0xf00 == 0x400 notrack"), "{rules}");
        assert!(rules.starts_with("table ip ambit\ndelete table ip ambit\n"), "{rules}");
    }
}
