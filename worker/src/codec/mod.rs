//! How records and keyed state become bytes: one serde story for every record type.
//!
//! Any type that is `Serialize + DeserializeOwned` crosses processes ([`record`]), is hashed
//! to a key group when it is a key ([`key_hash`]) and is checkpointed in keyed state
//! ([`state`]). The formats are postcard's (see docs/architecture.md for why). These modules
//! sit below the runtime's consumers: `net` and the operators call them, never the reverse.

pub mod key_hash;
pub mod record;
pub mod state;

/// postcard output appended to a caller's `Vec` (reused across batches): `push` and
/// `extend_from_slice`, where postcard's generic `Extend` flavour goes through iterators.
pub(crate) struct AppendTo<'a>(pub &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();
    #[inline]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.push(b);
        Ok(())
    }
    #[inline]
    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(b);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`.
#[inline]
pub(crate) fn append<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, AppendTo(out))
}
