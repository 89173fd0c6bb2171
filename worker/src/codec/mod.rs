//! How records and keyed state become bytes: one serde story for every record type.
//!
//! Any type that is `Serialize + DeserializeOwned` crosses processes ([`record`]), is hashed
//! to a key group when it is a key ([`key_hash`]) and is checkpointed in keyed state
//! ([`state`]). The formats are postcard's (see docs/architecture.md for why). These modules
//! sit below the runtime's consumers: `net` and the operators call them, never the reverse.

pub mod key_hash;
pub mod record;
pub mod state;
