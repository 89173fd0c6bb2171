//! Distributed execution: the gRPC data exchange between worker processes, the record
//! encoding it carries, and how a worker finds its peers.

pub mod cluster;
pub mod codec;
pub(crate) mod coordination;
pub(crate) mod exchange;
pub mod health;

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

/// The standard gRPC health service (Kubernetes `grpc` probes).
#[allow(clippy::all, rust_2018_idioms, missing_docs)]
pub mod health_proto {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// Bumped on any incompatible change of the exchange protocol or the record encoding.
pub const PROTOCOL_VERSION: u32 = 1;
