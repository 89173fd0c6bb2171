//! The snapshot of an operator that keeps event time (windows, process functions): a magic,
//! a format version byte, the operator's watermark (8 bytes, little endian), then its keyed
//! state in the `codec::state` format.

/// The snapshot's start, ready for `KeyedStateWriter::appending_to`.
pub(crate) fn start(magic: &[u8], version: u8, watermark: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(magic);
    out.push(version);
    out.extend_from_slice(&watermark.to_le_bytes());
    out
}

/// Checks the header of `snap` and splits it into (watermark, keyed-state blob). `what`
/// names the state in errors ("window state").
pub(crate) fn split<'a>(
    snap: &'a [u8],
    magic: &[u8],
    version: u8,
    what: &str,
) -> Result<(i64, &'a [u8]), String> {
    let rest = snap.strip_prefix(magic).ok_or_else(|| {
        format!(
            "not {what} (the {} header is missing)",
            String::from_utf8_lossy(magic)
        )
    })?;
    let (&found, rest) = rest.split_first().ok_or("cut off")?;
    if found != version {
        return Err(format!(
            "{what} format version {found} is not supported: this build reads version {version}"
        ));
    }
    if rest.len() < 8 {
        return Err("cut off before the watermark".into());
    }
    let (wm, blob) = rest.split_at(8);
    Ok((i64::from_le_bytes(wm.try_into().expect("8 bytes")), blob))
}
