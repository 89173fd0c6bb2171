//! streamjob runtime
