//! Pure naming of the overlay2-compatible store (semantics.md B; moby
//! `daemon/graphdriver/overlay2/overlay.go`):
//!
//! ```text
//! DIR/<id>/diff/        the layer; <id> = hex of its OCI chainID
//! DIR/<id>/link         26 chars of base32 (A-Z2-7), no newline: the layer's short name
//! DIR/<id>/lower        "l/SHORT:l/SHORT..." of the layers below, topmost first (not for the bottom)
//! DIR/<id>/work/        empty, for layers with a parent (a later rw mount's workdir)
//! DIR/l/SHORT -> ../<id>/diff
//! DIR/.layerkit/        ours: lock, namespace (the markers' xattr prefix), staging/, blobs/
//!                       (blob digest -> diffID, for reuse)
//! ```
//! Short names keep `lowerdir=l/A:l/B...` of 128 layers within the one page mount(2) accepts.

/// Length of a short link name (moby `idLength`).
pub const LINK_LEN: usize = 26;

/// The store id of a layer: the hex of its chainID.
pub fn id(chain_id: &str) -> &str {
    chain_id.strip_prefix("sha256:").unwrap_or(chain_id)
}

/// A short name from 17 random bytes: base32 (RFC 4648 alphabet), first 26 chars.
pub fn link_name(random: &[u8; 17]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(LINK_LEN);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in random {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < LINK_LEN {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

/// Whether `s` looks like a link name we (or moby) would write.
pub fn is_link_name(s: &[u8]) -> bool {
    s.len() == LINK_LEN
        && s.iter()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(b))
}

/// The `lower` file of a layer whose parent has short name `parent_link` and `lower` file
/// `parent_lower` (absent for the bottom layer).
pub fn lower_file(parent_link: &str, parent_lower: Option<&str>) -> String {
    match parent_lower {
        Some(l) if !l.is_empty() => format!("l/{parent_link}:{l}"),
        _ => format!("l/{parent_link}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_26_base32_chars() {
        let n = link_name(&[0xff; 17]);
        assert_eq!(n, "77777777777777777777777777");
        let n = link_name(&[0; 17]);
        assert_eq!(n, "AAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert!(is_link_name(link_name(&[0x5a; 17]).as_bytes()));
        assert!(!is_link_name(b"abc"));
    }

    #[test]
    fn lower_files_chain_topmost_first() {
        assert_eq!(lower_file("B", None), "l/B");
        assert_eq!(lower_file("C", Some("l/B:l/A")), "l/C:l/B:l/A");
        assert_eq!(id("sha256:ab"), "ab");
    }
}
