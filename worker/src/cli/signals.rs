//! SIGTERM and SIGINT: the first asks for a clean stop, the second exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal, as shells report death by SIGINT.
pub const EXIT_ON_SECOND_SIGNAL: i32 = 130;

/// Cancels `token` on the first SIGTERM or SIGINT and exits the process on the second, with
/// [`EXIT_ON_SECOND_SIGNAL`]. Call it from within a Tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for signals; stop the process with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping (signal again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(EXIT_ON_SECOND_SIGNAL);
    });
}
