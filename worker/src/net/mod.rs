//! The network between worker processes: the gRPC exchange that implements the runtime's
//! `Transport`, checkpoint coordination and job control, health, and how a worker finds its
//! peers. Depends on the runtime, never the reverse; `cluster` wires it to a job.

pub mod cluster;
pub(crate) mod coordination;
pub(crate) mod exchange;
pub mod health;
pub(crate) mod transport;

/// Code generated from `proto/exchange.proto` by the build script.
#[allow(clippy::all, rust_2018_idioms, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/streamjob.exchange.v1.rs"));
}

/// Code generated from `proto/coordination.proto`.
#[allow(clippy::all, rust_2018_idioms, missing_docs)]
pub mod coordination_proto {
    include!(concat!(env!("OUT_DIR"), "/streamjob.coordination.v1.rs"));
}

/// Code generated from `proto/control.proto` (the operator's client uses the same file).
#[allow(clippy::all, rust_2018_idioms, missing_docs)]
pub mod control_proto {
    include!(concat!(env!("OUT_DIR"), "/streamjob.control.v1.rs"));
}

/// The standard gRPC health protocol (Kubernetes `grpc` probes), from `tonic-health`.
pub mod health_proto {
    pub use tonic_health::pb::*;
}

/// Bumped on any incompatible change of the exchange protocol or the record encoding.
pub const PROTOCOL_VERSION: u32 = 1;
