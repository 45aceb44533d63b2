//! Logging. Access logs go to the `access` target (one line per
//! connection); everything else to the component targets. Flags, formats
//! and the run-time filter handle are every binary's ([`mesh::logging`]).

pub use mesh::logging::{LogArgs, LogLevelHandle, init};
