//! Every metric's `# HELP` line, so that the exposition explains itself; docs/metrics.md says
//! the same at more length. Registered once with the recorder, for the worker's metrics and the
//! coordinator's alike (a process shows only those it records).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes every metric to the installed recorder.
pub(super) fn describe_all() {
    describe_counter!("leasehold_worker_claimed_runs_total", "Runs claimed.");
    describe_histogram!(
        "leasehold_worker_claim_batch_size",
        Unit::Count,
        "Runs per claim statement."
    );
    describe_histogram!(
        "leasehold_worker_claim_duration_seconds",
        Unit::Seconds,
        "A claim statement, sent to answered."
    );
    describe_histogram!(
        "leasehold_worker_claim_wait_seconds",
        Unit::Seconds,
        "How long each claimed run was due before a claim took it, by the database's clock."
    );
    describe_histogram!(
        "leasehold_worker_claim_to_start_seconds",
        Unit::Seconds,
        "From a claim's answer to the first node of each run it claimed starting."
    );
    describe_histogram!(
        "leasehold_worker_flush_batch_size",
        Unit::Count,
        "Node writes per batched statement, by write."
    );
    describe_histogram!(
        "leasehold_worker_flush_duration_seconds",
        Unit::Seconds,
        "A batched node write, sent to answered, by write and outcome."
    );
    describe_histogram!(
        "leasehold_db_pool_wait_seconds",
        Unit::Seconds,
        "How long callers waited for a pooled database connection, by pool."
    );
    describe_counter!(
        "leasehold_db_errors_total",
        "Failed database calls, by SQLSTATE class (connection: no answer from the server)."
    );
    describe_counter!(
        "leasehold_worker_node_attempts_total",
        "Node attempts that ended, by kind and outcome."
    );
    describe_histogram!(
        "leasehold_worker_node_duration_seconds",
        Unit::Seconds,
        "How long node attempts ran, by kind and outcome."
    );
    describe_counter!(
        "leasehold_worker_retries_scheduled_total",
        "Retries queued with backoff after a failed attempt."
    );
    describe_counter!(
        "leasehold_worker_runs_left_total",
        "Runs that left the worker, by how."
    );
    describe_gauge!("leasehold_worker_runs_held", "Runs held now.");
    describe_gauge!(
        "leasehold_worker_capacity",
        "Runs the worker may hold at once."
    );
    describe_counter!(
        "leasehold_worker_lease_renewals_total",
        "Leases renewed by heartbeats."
    );
    describe_counter!(
        "leasehold_worker_lease_losses_total",
        "Leases a heartbeat found lost."
    );
    describe_counter!(
        "leasehold_worker_self_fences_total",
        "Runs stopped because their lease could not be renewed in time."
    );
    describe_counter!(
        "leasehold_grpc_requests_total",
        "gRPC calls by method and the code of the answer's head."
    );
    describe_histogram!(
        "leasehold_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC calls, received to the answer's head."
    );
    describe_gauge!(
        "leasehold_coordinator_watch_streams_open",
        "WatchRun streams open on this coordinator."
    );
    describe_gauge!(
        "leasehold_leader",
        "1 while this coordinator holds the leader lease."
    );
    describe_gauge!(
        "leasehold_leader_epoch",
        "The epoch of this coordinator's last leadership."
    );
    describe_histogram!(
        "leasehold_sweep_pass_duration_seconds",
        Unit::Seconds,
        "One pass of a sweep."
    );
    describe_counter!(
        "leasehold_sweep_actions_total",
        "What sweep passes did, by sweep and action."
    );
    describe_gauge!(
        "leasehold_queue_runs",
        "Unfinished runs by state, as the leader last read them."
    );
    describe_gauge!(
        "leasehold_queue_held_leases",
        "Runs held by a worker, as the leader last read them."
    );
    describe_gauge!(
        "leasehold_queue_oldest_due_age_seconds",
        Unit::Seconds,
        "How long the oldest due run has waited."
    );
    describe_gauge!(
        "leasehold_db_pool_max_connections",
        "Connections the pool may open."
    );
    describe_gauge!("leasehold_db_pool_connections", "Connections open.");
    describe_gauge!(
        "leasehold_db_pool_idle_connections",
        "Open connections no caller holds."
    );
    describe_gauge!(
        "leasehold_db_pool_waiters",
        "Callers waiting for a connection."
    );
}
