//! The built-in node kinds.

mod basic;
mod exec;
mod http;

pub use basic::{Approved, Echo, Noop, Sleep};
pub use exec::{Exec, ExecPolicy};
pub use http::Http;

use crate::handler::Registry;

/// A registry with the built-in kinds: `noop`, `echo`, `sleep`, `approval`, `http`, and `exec`.
///
/// `exec` runs programs on the worker's host, so it is registered only when `exec` allows at
/// least one program (the worker's `--exec-allow`); without an allow-list, `exec` nodes fail as an
/// unknown kind. `http` is always there.
pub fn builtin(exec: ExecPolicy) -> Registry {
    let mut registry = Registry::new();
    registry
        .register("noop", Noop)
        .register("echo", Echo)
        .register("sleep", Sleep)
        .register(crate::handler::APPROVAL_KIND, Approved)
        .register("http", Http::new());
    if !exec.allowed_programs.is_empty() {
        registry.register("exec", Exec::new(exec));
    }
    registry
}
