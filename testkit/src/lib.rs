//! Test harness for Leasehold's storage tests: a real PostgreSQL server, and one fresh database per
//! test.
//!
//! ```no_run
//! # async fn example() {
//! use leasehold_testkit::TestDb;
//! use tokio_postgres::NoTls;
//!
//! // Migrated by its owner; `db.url()` connects as the runtime role, which may not change the
//! // schema, and `db.owner_url()` as the owner.
//! let db = TestDb::new().await;
//! let (client, connection) = tokio_postgres::connect(db.owner_url(), NoTls).await.unwrap();
//! tokio::spawn(connection);
//! client.batch_execute("CREATE TABLE t (id int)").await.unwrap();
//! // The database is dropped when `db` goes out of scope, unless the test is panicking.
//! # }
//! ```
//!
//! # Which server
//!
//! - With `LEASEHOLD_TEST_DATABASE_URL` set (for example
//!   `postgres://postgres@127.0.0.1:5432/postgres`), tests use that server. The database named in
//!   the URL is the admin database, from which test databases are created and dropped; the role
//!   must be allowed to create databases.
//! - Otherwise the first test that asks starts a throwaway cluster, shared by every test of the
//!   process: `initdb` into a directory `leasehold-test-pg-<pid>-<random>` under the temp dir, then
//!   `pg_ctl start` on a free loopback port, with durability turned off. It takes about a second.
//!   When running as root it runs the PostgreSQL tools as the `postgres` user through `runuser`,
//!   because PostgreSQL refuses to run as root.
//!
//! # Teardown
//!
//! A [`TestDb`] drops its database when it goes out of scope, unless the thread is panicking: then
//! it keeps the database and prints its URL. A test that fails by returning `Err` is not panicking,
//! so its database is dropped.
//!
//! The throwaway cluster is stopped (`pg_ctl stop -m immediate`) and its directory removed by an
//! `atexit` hook, which runs when the test harness exits. A process that dies without exiting
//! (SIGKILL, Ctrl-C) leaves its cluster running; the next cluster start on the machine finds such
//! leftovers by the dead pid in their directory name, and stops and removes them.
//!
//! Unix only.
//!
//! # Layout
//!
//! - `server`: picks the server once per process and hands out its admin URL.
//! - `cluster`: the throwaway cluster: its directory, its settings, and sweeping leftovers;
//!   finding the binaries, `initdb`, starting and stopping are `leasehold_pgcluster`'s.
//! - `db`: [`TestDb`], one database per test, migrated by its owner and served as the runtime
//!   role [`RUNTIME_ROLE`], as production runs coordinators and workers.
//! - `wait`: [`wait_for`] and [`wait_for_every`], polling with a deadline instead of sleeping.
//! - `built`: [`workspace_binary`], this workspace's binaries, built for harnesses that run them.
//! - [`fixtures`]: a migrated database with a store ([`fixtures::Bundle`]), shared specs, runs
//!   started and claimed, and test-only SQL that moves rows in time.
//! - [`proxy`]: a loopback TCP proxy that passes, delays, black-holes or cuts connections to
//!   PostgreSQL, to fault the network between a process and the server.
//! - `owned`: [`OwnedCluster`], a throwaway cluster with the caller's settings (TLS among them),
//!   for the benchmark and for tests that need a server of their own.

mod built;
mod cluster;
mod db;
pub mod fixtures;
mod owned;
pub mod proxy;
mod server;
mod wait;

pub use built::{Built, Rebuild, workspace_binary};
pub use db::{RUNTIME_ROLE, TestDb};
pub use leasehold_pgcluster::Tls;
pub use owned::OwnedCluster;
pub use server::{DATABASE_URL_ENV, admin_url, with_database, with_user};
pub use wait::{wait_for, wait_for_every};
