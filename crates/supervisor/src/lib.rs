//! Running a topology on one machine: every component of a [`topology::Plan`] as a child
//! process on its loopback host, with health probes, restarts of what crashed (but not of what
//! a drill killed), a state dir for configs, logs and pid files, and a control socket through
//! which the CLI asks for `status`, `kill`, `start` and `down`.

pub mod control;
pub mod probe;
pub mod runner;
pub mod state_dir;
pub mod status;

pub use runner::Supervisor;
pub use state_dir::StateDir;
pub use status::{ComponentStatus, HostStatus, StackStatus};
