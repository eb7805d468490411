//! A PostgreSQL server of its own for tests, benchmarks and simulations: Debian's binaries
//! (`postgresql` package), a new cluster in a temporary directory, loopback only, a free port,
//! stopped (immediately) when dropped.
//!
//! `initdb` refuses to run as root; as root (CI), the server runs as the `postgres` user the
//! Debian package creates.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Set to `postgres` to run the hubs of the end-to-end tests on PostgreSQL
/// ([`test_store`]).
pub const TEST_STORE_ENV: &str = "TETHER_TEST_STORE";

pub struct TestServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

/// Server programs the tests run, all from one installation.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "pg_basebackup"];

/// The directory with the server programs: a directory on PATH that has them all, or
/// Debian's newest `/usr/lib/postgresql/<version>/bin` (PATH often has only wrappers or some
/// of them).
pub fn binaries() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if PROGRAMS.iter().all(|p| d.join(p).is_file()) {
                return Some(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            PROGRAMS
                .iter()
                .all(|p| bin.join(p).is_file())
                .then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl TestServer {
    /// Start a new server; an error says what is missing (`apt-get install postgresql`).
    pub fn start() -> anyhow::Result<Self> {
        let server = Self::empty()?;
        server
            .run(
                "initdb",
                &[
                    "-D",
                    &server.data().display().to_string(),
                    "-U",
                    "tether",
                    "--auth=trust",
                    "--no-instructions",
                    "-E",
                    "UTF8",
                ],
            )
            .context("initdb")?;
        server.pg_ctl_start()?;
        Ok(server)
    }

    /// From now on a commit is acknowledged only once a standby has it
    /// (`synchronous_standby_names`); attach one first ([`TestServer::standby`]), or commits wait.
    pub fn make_synchronous(&self) -> anyhow::Result<()> {
        self.sql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )?;
        self.sql("postgres", "SELECT pg_reload_conf()")
    }

    fn empty() -> anyhow::Result<Self> {
        let bin = binaries()
            .context("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")?;
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new().prefix("tether-pg-").tempdir()?;
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(status.success(), "chown {user} {}", dir.path().display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Self {
            dir,
            bin,
            port,
            run_as,
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A streaming-replication standby of this server (a base backup, then following its
    /// WAL), started; [`TestServer::promote`] makes it the primary.
    pub fn standby(&self) -> anyhow::Result<TestServer> {
        let standby = Self::empty()?;
        standby
            .run(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "tether",
                    "-D",
                    &standby.data().display().to_string(),
                    "-R",
                    "-X",
                    "stream",
                ],
            )
            .context("pg_basebackup")?;
        standby.pg_ctl_start()?;
        Ok(standby)
    }

    /// Make a standby the primary (after its primary died).
    pub fn promote(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data().display().to_string(), "-w", "promote"],
        )
    }

    /// Start (again, after [`TestServer::kill`]) on the same port and data.
    pub fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("server.log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .with_context(|| format!("starting PostgreSQL: {}", self.log_tail()))
    }

    /// Stop at once, as a crash would (no checkpoint): what was committed must survive.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://tether@127.0.0.1:{}/{db}", self.port)
    }

    /// Create a new, empty database and return its URL.
    pub fn create_db(&self, name: &str) -> anyhow::Result<String> {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// Run `sql` in database `db`, on a thread of its own: the blocking client cannot run on
    /// a thread that drives async tasks, as the end-to-end tests' threads do.
    pub fn sql(&self, db: &str, sql: &str) -> anyhow::Result<()> {
        let (url, sql) = (self.url(db), sql.to_string());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            c.batch_execute(&sql)?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// One server for a whole test binary, started on first use.
pub fn shared() -> anyhow::Result<&'static TestServer> {
    static SERVER: OnceLock<Result<TestServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| TestServer::start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A fresh database for one hub, when the tests run on PostgreSQL (`TETHER_TEST_STORE=postgres`).
pub fn test_store() -> anyhow::Result<Option<String>> {
    match std::env::var(TEST_STORE_ENV).as_deref() {
        Ok("postgres") => {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("hub_{}_{n}", std::process::id());
            shared()?.create_db(&name).map(Some)
        }
        Ok("" | "embedded") | Err(_) => Ok(None),
        Ok(other) => bail!("{TEST_STORE_ENV}={other:?}: expected `postgres` or `embedded`"),
    }
}

/// Whether a test that needs PostgreSQL can run here. Where it cannot, it says so; in CI
/// (`CI=true`) a missing server is a failure, never a silent skip.
pub fn available_or_skip(test: &str) -> bool {
    if binaries().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: PostgreSQL is not installed, and CI must run this test (apt-get install postgresql)"
    );
    eprintln!("{test}: skipped, PostgreSQL is not installed (apt-get install postgresql)");
    false
}
