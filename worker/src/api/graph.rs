//! The job graph the API records lives in [`crate::runtime::graph`], next to the executor
//! that instantiates it; this keeps the API's own paths to it.

pub(crate) use crate::runtime::graph::*;
