//! What every fault-scenario file shares: the time bounds and the binaries under test.
#![allow(dead_code)] // Each scenario file uses its own subset.

use std::time::Duration;

use leasehold_fault_tests::binaries;
use leasehold_fault_tests::cluster::{Binaries, WorkerOpts};

/// No scenario may take longer than this, setup and teardown included.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// How long a scenario's runs get to finish once the fault is over.
pub const FINISH_DEADLINE: Duration = Duration::from_secs(60);
/// How long every process gets to stop on SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// How often the suite looks at the database while it waits.
pub const POLL: Duration = Duration::from_millis(50);

/// The real `leasehold` binary and the test worker. The test worker's path is only known to
/// integration tests (Cargo sets `CARGO_BIN_EXE_*` for them), hence this module.
pub fn bins() -> Binaries {
    Binaries {
        leasehold: binaries::leasehold().to_owned(),
        worker: env!("CARGO_BIN_EXE_leasehold-test-worker").into(),
    }
}

/// `n` workers with the default settings.
pub fn workers(n: usize) -> Vec<WorkerOpts> {
    vec![WorkerOpts::default(); n]
}

/// A duration as seconds, for scenario lines.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
