//! The StreamJob operator: reconciles `StreamJob` resources into worker StatefulSets (see
//! `controller`), builds the owned objects as plain data (`resources`), and reports an
//! honest status (`status`).

pub mod control;
pub mod controller;
pub mod leader;
pub mod lenient;
pub mod merge;
pub mod metrics;
pub mod resources;
pub mod status;
