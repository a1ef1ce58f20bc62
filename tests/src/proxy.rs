//! The testkit's [`proxy`](leasehold_testkit::proxy) under the path `cluster` uses: a loopback
//! TCP proxy that passes, delays, black-holes or cuts connections.

pub use leasehold_testkit::proxy::*;
