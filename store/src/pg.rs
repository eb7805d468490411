//! The hub's tables in PostgreSQL (`tether-hub serve --store postgres://...`).
//!
//! Every typed table keeps its shape: a `StrTable` is the rows of `tether_kv` with its name, a
//! `SeqTable` the rows of `tether_log`; values are the same CBOR bytes as in redb, so the code
//! above the store cannot tell the engines apart and one group commit is one multi-row
//! transaction. Keys compare bytewise (`COLLATE "C"`), as redb compares `&str` keys, so
//! prefix and range scans return the same rows in the same order.
//!
//! Writes of one process are serialized, as redb serializes them, so a read-modify-write in a
//! write transaction sees no concurrent writer of this process. Read transactions are
//! REPEATABLE READ snapshots, like redb's. A commit returns once PostgreSQL has made it durable
//! (`synchronous_commit`, on by default), so "committed before acknowledged" holds.
//!
//! Every write to a `StrTable` outside [`UNFED`] is also recorded in `tether_changes` in the
//! same transaction, followed by a `NOTIFY`: the change feed hub replicas follow. The
//! notification is only a doorbell; readers catch up from the table by id.
//!
//! The schema is versioned ([`MIGRATIONS`]); `init` creates it, `serve` applies newer
//! migrations at start and refuses a database written by a newer binary.

mod pending;

use crate::pg_tls::Tls;
use crate::StoreError;
use pending::Pending;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, Statement};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Schema migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: tables as rows, and the change feed.
    r#"
    CREATE TABLE tether_kv (
        tbl text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        val bytea NOT NULL,
        PRIMARY KEY (tbl, key)
    );
    CREATE TABLE tether_log (
        tbl text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        val bytea NOT NULL,
        PRIMARY KEY (tbl, seq)
    );
    CREATE TABLE tether_changes (
        id bigserial PRIMARY KEY,
        tbl text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 2: the lease that says which hub process serves, with the epoch that fences the others.
    r#"
    CREATE TABLE tether_lease (
        name text PRIMARY KEY,
        holder text NOT NULL,
        epoch bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );
    "#,
    // 3: active/active replicas: which replica wrote each change (a replica skips its own), and
    // which replicas are alive (each renews its row; the leader adopts the clusters of the dead).
    r#"
    ALTER TABLE tether_changes ADD COLUMN origin text NOT NULL DEFAULT '';
    CREATE TABLE tether_replicas (
        name text PRIMARY KEY,
        expires_at timestamptz NOT NULL
    );
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Tables whose writes are not in the change feed: per-entry history that no replica caches
/// (the feed would grow with every status entry of the fleet).
const UNFED: &[&str] = &["status_history"];

/// The channel the change feed's doorbell rings on.
pub const CHANGES_CHANNEL: &str = "tether_changes";

/// Every write transaction of every hub process on the database takes this transaction-level
/// advisory lock first: writes are serialized across replicas as redb serializes them in one
/// process, so a read-modify-write never loses a concurrent replica's update, and change ids
/// are assigned in commit order (a feed reader never skips a change committed late).
const WRITE_LOCK: &str = "BEGIN; SELECT pg_advisory_xact_lock(7466650002)";

/// Connections one store opens at most; callers beyond wait for one to come back.
const MAX_CONNECTIONS: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No statement may hold a connection (and the writers behind it) longer than this.
const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// Planner settings of the hub's connections. Every statement reads by primary key or key
/// prefix, and `tether_kv` holds every table: a status batch's lookups met it nearly empty
/// when first planned, and the plan kept scanning the whole table as it grew (the prefetch
/// was active in 28 of 30 samples of the server's activity). Without sequential scans the
/// index is used at any size, so the generic plan is right too, and re-planning each
/// execution (14 % of the server's CPU in a profile) buys nothing.
const PLANNER: &str = "-c enable_seqscan=off -c plan_cache_mode=force_generic_plan";

pub(crate) struct PgStore {
    config: Config,
    tls: Tls,
    /// The URL without its password, for messages.
    pub(crate) label: Arc<str>,
    idle: Mutex<Pool>,
    returned: Condvar,
    /// Held for the whole of a write transaction (see the module header).
    writer: Mutex<()>,
    /// Set once this process holds the lease: every write transaction checks it (fencing).
    fence: Mutex<Option<Lease>>,
    /// This process's replica name, written with every change it records.
    origin: Mutex<Arc<str>>,
}

/// The serving lease as held by one process (see [`crate::Store::acquire_lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    /// Grows with every acquisition: a write that checks an older epoch is refused.
    pub epoch: i64,
}

const LEASE: &str = "hub";

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

/// What one connection's thread owns: the client and its prepared statements.
pub(crate) struct Session {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// A connection, served by a thread of its own. The blocking client drives a runtime of its
/// own inside every call, which tokio forbids on a thread that runs async tasks; the hub calls
/// the store from such threads too (as it may with redb), so statements hop to this thread.
pub(crate) struct Conn {
    jobs: std::sync::mpsc::Sender<Job>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// The connection's thread is gone (it panicked, or the connection was dropped).
const GONE: &str = "the database connection's thread is gone";

impl Conn {
    fn open(config: Config, tls: Tls) -> Result<Conn, PgErr> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready, connected) = std::sync::mpsc::sync_channel(1);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = closed.clone();
        let spawned = std::thread::Builder::new()
            .name("tether-pg".into())
            .spawn(move || {
                let mut session = match tls.connect(&config) {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        Session {
                            client,
                            statements: HashMap::new(),
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut session);
                    flag.store(
                        session.client.is_closed(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            });
        if spawned.is_err() {
            return Err(PgErr::Gone);
        }
        match connected.recv() {
            Ok(Ok(())) => Ok(Conn { jobs, closed }),
            Ok(Err(e)) => Err(PgErr::Pg(e)),
            Err(_) => Err(PgErr::Gone),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Run `f` on the connection's thread and wait for it.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, PgErr> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        if self.jobs.send(job).is_err() {
            self.closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(PgErr::Gone);
        }
        match rx.recv() {
            Ok(r) => r.map_err(PgErr::Pg),
            Err(_) => {
                self.closed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(PgErr::Gone)
            }
        }
    }

    fn batch(&self, sql: &'static str) -> Result<(), PgErr> {
        self.call(move |s| s.client.batch_execute(sql))
    }
}

/// What failed: a statement or connection (PostgreSQL's error), or the connection's thread.
pub(crate) enum PgErr {
    Pg(postgres::Error),
    Gone,
}

impl From<postgres::Error> for PgErr {
    fn from(e: postgres::Error) -> Self {
        PgErr::Pg(e)
    }
}

impl PgErr {
    /// The connection cannot be used again.
    fn is_closed(&self) -> bool {
        match self {
            PgErr::Pg(e) => e.is_closed() || e.code().is_none(),
            PgErr::Gone => true,
        }
    }
}

impl Session {
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// The URL (or `key=value` string) with any password replaced, so it can be logged.
pub fn redact(url: &str) -> String {
    if !url.contains("://") {
        return url
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub(crate) fn error(label: &str, e: PgErr) -> StoreError {
    use postgres::error::SqlState;
    let e = match e {
        PgErr::Pg(e) => e,
        PgErr::Gone => {
            return StoreError::Postgres {
                database: label.to_string(),
                detail: GONE.into(),
                retryable: true,
            }
        }
    };
    // No SQL state: the connection or the network failed, not the statement.
    let retryable = e.is_closed()
        || e.code().is_none_or(|c| {
            [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::CONNECTION_FAILURE,
                SqlState::CONNECTION_EXCEPTION,
                SqlState::TOO_MANY_CONNECTIONS,
                // A standby that is not promoted yet, or a primary that was demoted.
                SqlState::READ_ONLY_SQL_TRANSACTION,
                SqlState::QUERY_CANCELED,
            ]
            .contains(c)
        });
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => crate::pg_tls::describe(&e),
    };
    StoreError::Postgres {
        database: label.to_string(),
        detail,
        retryable,
    }
}

impl PgStore {
    /// Connect to `url`; `create`: apply every migration (init), otherwise the schema must
    /// exist already (serve never creates a hub's database).
    pub(crate) fn open(url: &str, create: bool) -> Result<Self, StoreError> {
        let label = redact(url);
        let refused = |detail: String| StoreError::Postgres {
            database: label.clone(),
            detail,
            retryable: false,
        };
        let (url, tls_params) = crate::pg_tls::split(url).map_err(refused)?;
        let mut config: Config = url
            .parse()
            .map_err(|e: postgres::Error| refused(format!("not a PostgreSQL URL: {e}")))?;
        let tls = Tls::new(&config, &tls_params, &label).map_err(refused)?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            // Unacknowledged data this long means the server or the path is gone: fail the
            // call (retryable) instead of retransmitting for many minutes.
            .tcp_user_timeout(Duration::from_secs(20))
            // Every statement reads by primary key or key prefix; see PLANNER.
            .options(&format!(
                "-c statement_timeout={STATEMENT_TIMEOUT_MS} {PLANNER}"
            ));
        if config.get_application_name().is_none() {
            config.application_name("tether-hub");
        }
        let store = Self {
            config,
            tls,
            label: label.into(),
            idle: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            writer: Mutex::new(()),
            fence: Mutex::new(None),
            origin: Mutex::new(Arc::from("")),
        };
        store.migrate(create)?;
        Ok(store)
    }

    fn err(&self, e: impl Into<PgErr>) -> StoreError {
        error(&self.label, e.into())
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        Conn::open(self.config.clone(), self.tls.clone()).map_err(|e| self.err(e))
    }

    fn take(&self) -> Result<Conn, StoreError> {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = pool.idle.pop() {
                if !c.is_closed() {
                    return Ok(c);
                }
                pool.open -= 1;
                continue;
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                return self.connect().inspect_err(|_| {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                    self.returned.notify_one();
                });
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Back to the pool, or closed for good when it failed (a new one is made on demand).
    fn give_back(&self, conn: Conn, healthy: bool) {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if healthy && !conn.is_closed() {
            pool.idle.push(conn);
        } else {
            pool.open -= 1;
        }
        drop(pool);
        self.returned.notify_one();
    }

    fn migrate(&self, create: bool) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = self.take()?;
        let label = self.label.clone();
        let result = conn
            .call(move |s| Ok(migrate_on(&label, &mut s.client, create)))
            .map_err(|e| self.err(e))
            .and_then(|r| r);
        self.give_back(conn, result.is_ok());
        result
    }
}

fn migrate_on(label: &Arc<str>, client: &mut Client, create: bool) -> Result<(), StoreError> {
    let err = |e: postgres::Error| error(label, PgErr::Pg(e));
    let mut tx = client.transaction().map_err(err)?;
    // One migrator at a time, however many replicas start together.
    tx.execute("SELECT pg_advisory_xact_lock(7466650001)", &[])
        .map_err(err)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('tether_schema') IS NOT NULL", &[])
        .map_err(err)?
        .get(0);
    let version: i32 = if exists {
        tx.query_one("SELECT version FROM tether_schema", &[])
            .map_err(err)?
            .get(0)
    } else if create {
        tx.batch_execute(
            "CREATE TABLE tether_schema (one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL);
             INSERT INTO tether_schema (version) VALUES (0);",
        )
        .map_err(err)?;
        0
    } else {
        return Err(StoreError::MissingSchema {
            database: label.to_string(),
        });
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            database: label.to_string(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).map_err(err)?;
        tracing::info!(database = %label, version = i + 1, "applied schema migration");
    }
    tx.execute("UPDATE tether_schema SET version = $1", &[&SCHEMA_VERSION])
        .map_err(err)?;
    tx.commit().map_err(err)
}

impl PgStore {
    /// Run `f` in a write transaction; commit when it returns `Ok`.
    pub(crate) fn write<R, E>(
        &self,
        f: impl FnOnce(&crate::WriteTx) -> Result<R, E>,
    ) -> Result<R, crate::Outcome<E>> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = self.begin(WRITE_LOCK)?;
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(lease) = fence {
            // In the same transaction, and holding the lease row against a takeover until it
            // commits: a process that lost the lease (paused, partitioned) never writes.
            let holder = lease.holder.clone();
            let checked = conn.call(move |s| {
                let st = s.prepared(
                    "SELECT 1 FROM tether_lease WHERE name = $1 AND holder = $2 AND epoch = $3
                     AND expires_at > clock_timestamp() FOR SHARE",
                )?;
                Ok(s.client
                    .query_opt(&st, &[&LEASE, &holder, &lease.epoch])?
                    .is_some())
            });
            match checked {
                Ok(true) => {}
                Ok(false) => {
                    let rolled_back = conn.batch("ROLLBACK").is_ok();
                    self.give_back(conn, rolled_back);
                    return Err(StoreError::Fenced {
                        database: self.label.to_string(),
                        epoch: lease.epoch,
                    }
                    .into());
                }
                Err(e) => {
                    self.give_back(conn, false);
                    return Err(self.err(e).into());
                }
            }
        }
        let tx = crate::WriteTx::pg(WriteTx {
            conn: RefCell::new(conn),
            changed: RefCell::new(BTreeSet::new()),
            pending: RefCell::new(Pending::default()),
            failed: std::cell::Cell::new(false),
            label: self.label.clone(),
        });
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&tx)));
        let WriteTx {
            conn,
            changed,
            pending,
            failed,
            ..
        } = tx.into_pg();
        let conn = conn.into_inner();
        let out = match out {
            Ok(out) => out,
            Err(panic) => {
                // Not this connection's fault, but its transaction is open: never reuse it.
                self.give_back(conn, false);
                std::panic::resume_unwind(panic);
            }
        };
        // A statement failed and the closure carried on: PostgreSQL aborted the transaction,
        // and COMMIT would answer ROLLBACK without an error. Never report that as committed.
        if out.is_ok() && failed.get() {
            let rolled_back = conn.batch("ROLLBACK").is_ok();
            self.give_back(conn, rolled_back);
            return Err(StoreError::Postgres {
                database: self.label.to_string(),
                detail: "a statement of this transaction failed, so nothing of it was committed"
                    .into(),
                retryable: true,
            }
            .into());
        }
        let end = match &out {
            Ok(_) => {
                let changed = changed.into_inner();
                let origin = self
                    .origin
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let writes = pending.into_inner().take();
                conn.call(move |s| {
                    writes.send(s)?;
                    record_changes(s, &changed, &origin)?;
                    s.client.batch_execute("COMMIT")
                })
            }
            Err(_) => conn.batch("ROLLBACK"),
        };
        match end {
            Ok(()) => {
                self.give_back(conn, true);
                out.map_err(crate::Outcome::Caller)
            }
            Err(e) => {
                // The transaction's fate is unknown to this connection: never reuse it.
                self.give_back(conn, false);
                match out {
                    Ok(_) => Err(self.err(e).into()),
                    Err(caller) => Err(crate::Outcome::Caller(caller)),
                }
            }
        }
    }

    /// A connection with a transaction begun. An idle connection may have died with the
    /// server (a restart, a failover) without knowing it yet: that one is dropped and a fresh
    /// one tried, so a recovered server costs no failed call.
    fn begin(&self, sql: &'static str) -> Result<Conn, StoreError> {
        let mut last = None;
        for _ in 0..2 {
            let conn = self.take()?;
            match conn.batch(sql) {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    self.give_back(conn, false);
                    if !e.is_closed() {
                        return Err(self.err(e));
                    }
                    last = Some(e);
                }
            }
        }
        Err(self.err(last.unwrap_or(PgErr::Gone)))
    }

    pub(crate) fn read<R, E>(
        &self,
        f: impl FnOnce(&crate::ReadTx) -> Result<R, E>,
    ) -> Result<R, crate::Outcome<E>> {
        let conn = self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let tx = crate::ReadTx::pg(ReadTx {
            conn: RefCell::new(conn),
            label: self.label.clone(),
        });
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&tx)));
        let conn = tx.into_pg().conn.into_inner();
        let out = match out {
            Ok(out) => out,
            Err(panic) => {
                self.give_back(conn, false);
                std::panic::resume_unwind(panic);
            }
        };
        let ended = conn.batch("ROLLBACK").is_ok();
        self.give_back(conn, ended);
        out.map_err(crate::Outcome::Caller)
    }

    /// Changes after `after` (an id), oldest first, at most `limit`.
    pub(crate) fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        self.with_conn(move |s| {
            let st = s.prepared(
                "SELECT id, tbl, key, origin FROM tether_changes WHERE id > $1 ORDER BY id LIMIT $2",
            )?;
            Ok(s.client
                .query(&st, &[&after, &limit])?
                .iter()
                .map(|r| Change {
                    id: r.get(0),
                    table: r.get(1),
                    key: r.get(2),
                    origin: r.get(3),
                })
                .collect())
        })
    }

    /// The newest id in the feed (0 when it is empty): where a reader that has just read
    /// everything starts.
    pub(crate) fn changes_head(&self) -> Result<i64, StoreError> {
        self.with_conn(|s| {
            let st = s.prepared("SELECT coalesce(max(id), 0) FROM tether_changes")?;
            Ok(s.client.query_one(&st, &[])?.get(0))
        })
    }

    /// The oldest id still in the feed (`None` when it is empty): a reader whose position is
    /// below it has missed changes and must re-read everything.
    pub(crate) fn changes_horizon(&self) -> Result<Option<i64>, StoreError> {
        self.with_conn(|s| {
            let st = s.prepared("SELECT min(id) FROM tether_changes")?;
            Ok(s.client.query_one(&st, &[])?.get(0))
        })
    }

    /// Forget changes older than `age`; returns how many. Readers that fall further behind
    /// find their position below the horizon and re-read everything.
    pub(crate) fn prune_changes_older_than(&self, age: Duration) -> Result<u64, StoreError> {
        let ms = age.as_millis() as f64;
        self.with_conn(move |s| {
            let st = s.prepared(
                "DELETE FROM tether_changes WHERE at < clock_timestamp() - $1 * interval '1 millisecond'",
            )?;
            s.client.execute(&st, &[&ms])
        })
    }

    /// Forget changes with ids up to `through`; returns how many.
    pub(crate) fn prune_changes(&self, through: i64) -> Result<u64, StoreError> {
        self.with_conn(move |s| {
            let st = s.prepared("DELETE FROM tether_changes WHERE id <= $1")?;
            s.client.execute(&st, &[&through])
        })
    }

    fn with_conn<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, StoreError> {
        let conn = self.take()?;
        let out = conn.call(f);
        self.give_back(conn, out.is_ok());
        out.map_err(|e| self.err(e))
    }

    /// Take the serving lease for `holder` if nobody else holds it unexpired (the database's
    /// clock decides, so hub clocks need not agree). Every acquisition, also by the same
    /// holder after a restart, starts a new epoch: whatever wrote under the old one is fenced.
    pub(crate) fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let h = holder.to_string();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let epoch: Option<i64> = self.with_conn(move |s| {
            let st = s.prepared(
                "INSERT INTO tether_lease AS l (name, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE
                   SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at
                   WHERE l.expires_at <= clock_timestamp() OR l.holder = excluded.holder
                 RETURNING epoch",
            )?;
            Ok(s.client
                .query_opt(&st, &[&LEASE, &h, &(ttl_ms as f64)])?
                .map(|r| r.get(0)))
        })?;
        Ok(epoch.map(|epoch| Lease {
            holder: holder.to_string(),
            epoch,
        }))
    }

    /// Extend the lease; `false` once it is lost (expired and taken, or never held).
    pub(crate) fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let (h, epoch) = (lease.holder.clone(), lease.epoch);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.with_conn(move |s| {
            let st = s.prepared(
                "UPDATE tether_lease SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
                 WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()",
            )?;
            Ok(s.client.execute(&st, &[&LEASE, &h, &epoch, &(ttl_ms as f64)])? == 1)
        })
    }

    /// Give the lease up now (a clean stop), so a standby need not wait for it to expire.
    pub(crate) fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        // The fence stays: with the lease expired, any later write of this process is refused.
        let (h, epoch) = (lease.holder.clone(), lease.epoch);
        self.with_conn(move |s| {
            let st = s.prepared(
                "UPDATE tether_lease SET expires_at = clock_timestamp()
                 WHERE name = $1 AND holder = $2 AND epoch = $3",
            )?;
            s.client.execute(&st, &[&LEASE, &h, &epoch]).map(|_| ())
        })
    }

    /// Name the changes this process records (see [`Change::origin`]).
    pub(crate) fn set_origin(&self, name: &str) {
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(name);
    }

    /// Say that replica `name` is alive for `ttl` more (the database's clock decides).
    pub(crate) fn beat_replica(&self, name: &str, ttl: Duration) -> Result<(), StoreError> {
        let n = name.to_string();
        let ttl_ms = ttl.as_millis() as f64;
        self.with_conn(move |s| {
            let st = s.prepared(
                "INSERT INTO tether_replicas (name, expires_at)
                 VALUES ($1, clock_timestamp() + $2 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
            )?;
            s.client.execute(&st, &[&n, &ttl_ms]).map(|_| ())
        })
    }

    /// The replicas whose last beat has not expired; forgets long-dead ones.
    pub(crate) fn live_replicas(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|s| {
            let st = s.prepared(
                "DELETE FROM tether_replicas WHERE expires_at < clock_timestamp() - interval '1 day'",
            )?;
            s.client.execute(&st, &[])?;
            let st = s.prepared(
                "SELECT name FROM tether_replicas WHERE expires_at > clock_timestamp() ORDER BY name",
            )?;
            Ok(s.client.query(&st, &[])?.iter().map(|r| r.get(0)).collect())
        })
    }

    /// A replica stopping cleanly says so, so that others need not wait for its beat to expire.
    pub(crate) fn drop_replica(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.with_conn(move |s| {
            let st = s.prepared("DELETE FROM tether_replicas WHERE name = $1")?;
            s.client.execute(&st, &[&n]).map(|_| ())
        })
    }

    /// From now on every write transaction checks `lease` first.
    pub(crate) fn fence_writes(&self, lease: &Lease) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease.clone());
    }

    /// A connection that waits for the change feed's doorbell (`LISTEN`), separate from the
    /// pool so that waiting holds no writer up.
    pub(crate) fn doorbell(&self) -> Result<Doorbell, StoreError> {
        let conn = self.connect()?;
        conn.call(|s| s.client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")))
            .map_err(|e| self.err(e))?;
        Ok(Doorbell {
            conn,
            label: self.label.to_string(),
        })
    }
}

/// One entry of the change feed: a row of `table` under `key` was written or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    pub table: String,
    pub key: String,
    /// The replica whose transaction wrote it (`''` for writes before replicas were named).
    pub origin: String,
}

/// Waits for commits that changed fed tables (see [`crate::Store::doorbell`]).
pub struct Doorbell {
    conn: Conn,
    label: String,
}

impl Doorbell {
    /// Whether the doorbell rang within `timeout`. A `false` says nothing was heard, not that
    /// nothing changed: notifications are lost with connections, so readers still catch up
    /// from the feed on a timer.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        self.conn
            .call(move |s| {
                let mut n = s.client.notifications();
                let mut rang = n.timeout_iter(timeout).next()?.is_some();
                // Coalesce whatever else is already queued.
                let mut pending = n.iter();
                while let Ok(Some(_)) = pending.next() {
                    rang = true;
                }
                Ok(rang)
            })
            .map_err(|e| error(&self.label, e))
    }
}

fn record_changes(
    s: &mut Session,
    changed: &BTreeSet<(&'static str, String)>,
    origin: &str,
) -> Result<(), postgres::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let (tables, keys): (Vec<&str>, Vec<&str>) =
        changed.iter().map(|(t, k)| (*t, k.as_str())).unzip();
    let st = s.prepared(
        "INSERT INTO tether_changes (tbl, key, origin) SELECT t, k, $3 FROM unnest($1::text[], $2::text[]) AS u(t, k)",
    )?;
    s.client.execute(&st, &[&tables, &keys, &origin])?;
    let st = s.prepared("SELECT pg_notify($1, '')")?;
    s.client.execute(&st, &[&CHANGES_CHANNEL])?;
    Ok(())
}

fn seq_i64(label: &str, seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Postgres {
        database: label.to_string(),
        detail: format!("sequence number {seq} does not fit PostgreSQL's bigint"),
        retryable: false,
    })
}

fn seq_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

type Rows = Vec<(String, Vec<u8>)>;
type SeqRows = Vec<(u64, Vec<u8>)>;

fn rows(rs: Vec<postgres::Row>) -> Rows {
    rs.iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn seq_rows(rs: Vec<postgres::Row>) -> SeqRows {
    rs.iter().map(|r| (seq_u64(r.get(0)), r.get(1))).collect()
}

/// The statements both kinds of transaction read with. Arguments are copied: the statement
/// runs on the connection's thread.
pub(crate) trait Ops {
    fn conn(&self) -> std::cell::Ref<'_, Conn>;
    fn label(&self) -> &str;
    /// A statement failed: the transaction is aborted.
    fn failed(&self) {}
    /// Called before a statement that reads many rows: they must include this transaction's
    /// own writes.
    fn before_scan(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.conn().call(f).map_err(|e| {
            self.failed();
            error(self.label(), e)
        })
    }

    fn get(&self, tbl: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        select_row(self, tbl, key)
    }

    fn list(&self, tbl: &str) -> Result<Rows, StoreError> {
        self.before_scan()?;
        let tbl = tbl.to_string();
        self.run(move |s| {
            let st = s.prepared("SELECT key, val FROM tether_kv WHERE tbl = $1 ORDER BY key")?;
            Ok(rows(s.client.query(&st, &[&tbl])?))
        })
    }

    fn list_prefix(&self, tbl: &str, prefix: &str) -> Result<Rows, StoreError> {
        self.before_scan()?;
        let (tbl, from) = (tbl.to_string(), prefix.to_string());
        let end = crate::table::prefix_end(prefix);
        let found = self.run(move |s| match end {
            Some(end) => {
                let st = s.prepared(
                    "SELECT key, val FROM tether_kv WHERE tbl = $1 AND key >= $2 AND key < $3 ORDER BY key",
                )?;
                Ok(rows(s.client.query(&st, &[&tbl, &from, &end])?))
            }
            None => {
                let st = s.prepared(
                    "SELECT key, val FROM tether_kv WHERE tbl = $1 AND key >= $2 ORDER BY key",
                )?;
                Ok(rows(s.client.query(&st, &[&tbl, &from])?))
            }
        })?;
        Ok(found
            .into_iter()
            .take_while(|(k, _)| k.starts_with(prefix))
            .collect())
    }

    fn count(&self, tbl: &str) -> Result<u64, StoreError> {
        self.before_scan()?;
        let tbl = tbl.to_string();
        self.run(move |s| {
            let st = s.prepared("SELECT count(*) FROM tether_kv WHERE tbl = $1")?;
            Ok(seq_u64(s.client.query_one(&st, &[&tbl])?.get(0)))
        })
    }

    fn range(&self, tbl: &str, from: u64, limit: usize) -> Result<SeqRows, StoreError> {
        self.before_scan()?;
        let from = seq_i64(self.label(), from)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let tbl = tbl.to_string();
        self.run(move |s| {
            let st = s.prepared(
                "SELECT seq, val FROM tether_log WHERE tbl = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            )?;
            Ok(seq_rows(s.client.query(&st, &[&tbl, &from, &limit])?))
        })
    }

    fn tail(&self, tbl: &str, limit: usize) -> Result<SeqRows, StoreError> {
        self.before_scan()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let tbl = tbl.to_string();
        let mut found = self.run(move |s| {
            let st = s.prepared(
                "SELECT seq, val FROM tether_log WHERE tbl = $1 ORDER BY seq DESC LIMIT $2",
            )?;
            Ok(seq_rows(s.client.query(&st, &[&tbl, &limit])?))
        })?;
        found.reverse();
        Ok(found)
    }

    fn seq_len(&self, tbl: &str) -> Result<u64, StoreError> {
        self.before_scan()?;
        let tbl = tbl.to_string();
        self.run(move |s| {
            let st = s.prepared("SELECT count(*) FROM tether_log WHERE tbl = $1")?;
            Ok(seq_u64(s.client.query_one(&st, &[&tbl])?.get(0)))
        })
    }
}

/// One row by key.
fn select_row(
    tx: &(impl Ops + ?Sized),
    tbl: &'static str,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let key = key.to_string();
    tx.run(move |s| {
        let st = s.prepared("SELECT val FROM tether_kv WHERE tbl = $1 AND key = $2")?;
        Ok(s.client.query_opt(&st, &[&tbl, &key])?.map(|r| r.get(0)))
    })
}

pub struct WriteTx {
    conn: RefCell<Conn>,
    changed: RefCell<BTreeSet<(&'static str, String)>>,
    /// Writes not sent yet, and rows already read (see `pending`).
    pending: RefCell<Pending>,
    failed: std::cell::Cell<bool>,
    label: Arc<str>,
}

pub struct ReadTx {
    conn: RefCell<Conn>,
    label: Arc<str>,
}

impl Ops for WriteTx {
    fn conn(&self) -> std::cell::Ref<'_, Conn> {
        self.conn.borrow()
    }
    fn label(&self) -> &str {
        &self.label
    }
    fn failed(&self) {
        self.failed.set(true);
    }
    fn before_scan(&self) -> Result<(), StoreError> {
        self.flush()
    }
    fn get(&self, tbl: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(known) = self.pending.borrow().lookup(tbl, key) {
            return Ok(known);
        }
        let found = select_row(self, tbl, key)?;
        self.pending.borrow_mut().learn(tbl, key, found.clone());
        Ok(found)
    }
}

impl Ops for ReadTx {
    fn conn(&self) -> std::cell::Ref<'_, Conn> {
        self.conn.borrow()
    }
    fn label(&self) -> &str {
        &self.label
    }
}

impl WriteTx {
    fn changed(&self, tbl: &'static str, key: &str) {
        if !UNFED.contains(&tbl) {
            self.changed.borrow_mut().insert((tbl, key.to_string()));
        }
    }

    /// Send the writes kept so far (see `pending`), before a statement that must see them.
    fn flush(&self) -> Result<(), StoreError> {
        let batch = self.pending.borrow_mut().take();
        if batch.is_empty() {
            return Ok(());
        }
        self.run(move |s| batch.send(s))
    }

    /// Read these rows in one statement, so the transaction's later `get`s of them cost no
    /// round trip. Rows already known are not asked for again.
    pub(crate) fn prefetch(&self, rows: &[(&'static str, &str)]) -> Result<(), StoreError> {
        let (tbls, keys) = self.pending.borrow().unknown(rows);
        if tbls.is_empty() {
            return Ok(());
        }
        let (tbls, keys, found) = self.run(move |s| {
            let found = pending::select_rows(s, &tbls, &keys)?;
            Ok((tbls, keys, found))
        })?;
        let mut pending = self.pending.borrow_mut();
        for ((tbl, key), val) in tbls.into_iter().zip(keys).zip(found) {
            pending.learn(tbl, &key, val);
        }
        Ok(())
    }

    pub(crate) fn put(&self, tbl: &'static str, key: &str, val: &[u8]) -> Result<(), StoreError> {
        self.pending.borrow_mut().put(tbl, key, Some(val.to_vec()));
        self.changed(tbl, key);
        Ok(())
    }

    pub(crate) fn remove(&self, tbl: &'static str, key: &str) -> Result<bool, StoreError> {
        let existed = match self.pending.borrow().lookup(tbl, key) {
            Some(known) => known.is_some(),
            None => select_row(self, tbl, key)?.is_some(),
        };
        if existed {
            self.pending.borrow_mut().put(tbl, key, None);
            self.changed(tbl, key);
        } else {
            self.pending.borrow_mut().learn(tbl, key, None);
        }
        Ok(existed)
    }

    /// Remove the given keys (found by a scan in the caller's order); returns how many.
    fn remove_keys(&self, tbl: &'static str, keys: Vec<String>) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.flush()?;
        self.pending.borrow_mut().forget_table(tbl);
        for k in &keys {
            self.changed(tbl, k);
        }
        self.run(move |s| {
            let st = s.prepared("DELETE FROM tether_kv WHERE tbl = $1 AND key = ANY($2)")?;
            s.client.execute(&st, &[&tbl, &keys])
        })
    }

    pub(crate) fn remove_prefix_except_newest(
        &self,
        tbl: &'static str,
        prefix: &str,
        keep: usize,
    ) -> Result<u64, StoreError> {
        let keys: Vec<String> = Ops::list_prefix(self, tbl, prefix)?
            .into_iter()
            .rev()
            .skip(keep)
            .map(|(k, _)| k)
            .collect();
        self.remove_keys(tbl, keys)
    }

    pub(crate) fn remove_range(
        &self,
        tbl: &'static str,
        from: &str,
        through: &str,
    ) -> Result<u64, StoreError> {
        self.flush()?;
        self.pending.borrow_mut().forget_table(tbl);
        let (from, through) = (from.to_string(), through.to_string());
        let keys: Vec<String> = self.run(move |s| {
            let st = s.prepared(
                "DELETE FROM tether_kv WHERE tbl = $1 AND key >= $2 AND key <= $3 RETURNING key",
            )?;
            Ok(s.client
                .query(&st, &[&tbl, &from, &through])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })?;
        for k in &keys {
            self.changed(tbl, k);
        }
        Ok(keys.len() as u64)
    }

    /// Send what is kept, then run a statement that changes the log `tbl` other than by
    /// appending (so the next sequence number is asked for again).
    fn change_log<R: Send + 'static>(
        &self,
        tbl: &'static str,
        f: impl FnOnce(&mut Session) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.flush()?;
        self.pending.borrow_mut().forget_log(tbl);
        self.run(f)
    }

    pub(crate) fn drop_log(&self, tbl: &'static str) -> Result<bool, StoreError> {
        let n = self.change_log(tbl, move |s| {
            let st = s.prepared("DELETE FROM tether_log WHERE tbl = $1")?;
            s.client.execute(&st, &[&tbl])
        })?;
        Ok(n > 0)
    }

    pub(crate) fn insert_at(
        &self,
        tbl: &'static str,
        seq: u64,
        val: &[u8],
    ) -> Result<(), StoreError> {
        let seq = seq_i64(&self.label, seq)?;
        let v = val.to_vec();
        self.change_log(tbl, move |s| {
            let st = s.prepared(
                "INSERT INTO tether_log (tbl, seq, val) VALUES ($1, $2, $3)
                 ON CONFLICT (tbl, seq) DO UPDATE SET val = excluded.val",
            )?;
            s.client.execute(&st, &[&tbl, &seq, &v])
        })?;
        Ok(())
    }

    pub(crate) fn remove_seq(&self, tbl: &'static str, seq: u64) -> Result<bool, StoreError> {
        let seq = seq_i64(&self.label, seq)?;
        let n = self.change_log(tbl, move |s| {
            let st = s.prepared("DELETE FROM tether_log WHERE tbl = $1 AND seq = $2")?;
            s.client.execute(&st, &[&tbl, &seq])
        })?;
        Ok(n > 0)
    }

    pub(crate) fn remove_through(&self, tbl: &'static str, seq: u64) -> Result<u64, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.change_log(tbl, move |s| {
            let st = s.prepared("DELETE FROM tether_log WHERE tbl = $1 AND seq <= $2")?;
            s.client.execute(&st, &[&tbl, &seq])
        })
    }

    /// Append at the next sequence number; the entry is sent with the transaction's other
    /// writes. Only the first append to a log in a transaction asks the server where it ends:
    /// no other writer can append meanwhile (the write lock).
    pub(crate) fn append(&self, tbl: &'static str, val: &[u8]) -> Result<u64, StoreError> {
        let known = self.pending.borrow().next_seq(tbl);
        let next = match known {
            Some(n) => n,
            None => self.run(move |s| {
                let st =
                    s.prepared("SELECT coalesce(max(seq), 0) + 1 FROM tether_log WHERE tbl = $1")?;
                Ok(s.client.query_one(&st, &[&tbl])?.get::<_, i64>(0))
            })?,
        };
        self.pending.borrow_mut().append(tbl, next, val.to_vec());
        Ok(seq_u64(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redact("postgres://tether:s3cret@db.example:5432/hub"),
            "postgres://tether:***@db.example:5432/hub"
        );
        assert_eq!(
            redact("postgres://tether@db/hub"),
            "postgres://tether@db/hub"
        );
        assert_eq!(redact("host=/run/pg dbname=hub"), "host=/run/pg dbname=hub");
        assert_eq!(
            redact("host=db password=x user=t"),
            "host=db password=*** user=t"
        );
    }
}
