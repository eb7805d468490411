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
    /// Started with [`TestServer::start_tls`]: TCP clients must use TLS and a password.
    tls_only: bool,
}

/// The password of `tether` on a [`TestServer::start_tls`] server.
pub const TLS_PASSWORD: &str = "tls-test-password";

/// A CA of a test's own and a server certificate it signed, for [`TestServer::start_tls`].
pub struct TestTls {
    /// The CA certificate (PEM): what a client names in `sslrootcert`.
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestTls {
    /// A new CA, and a server certificate for `names` (host names or IP addresses).
    pub fn new(names: &[&str]) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "tether test PostgreSQL CA");
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Write the CA certificate to `path` and return the path as a string for a URL.
    pub fn write_ca(&self, path: &Path) -> anyhow::Result<String> {
        std::fs::write(path, &self.ca_pem)?;
        Ok(path.display().to_string())
    }
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
        server.initdb(&["--auth=trust"])?;
        server.pg_ctl_start()?;
        Ok(server)
    }

    /// A new cluster in the data directory, superuser `tether`, with `auth`'s methods.
    fn initdb(&self, auth: &[&str]) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        let mut args = vec![
            "-D",
            &data,
            "-U",
            "tether",
            "--no-instructions",
            "-E",
            "UTF8",
        ];
        args.extend_from_slice(auth);
        self.run("initdb", &args).context("initdb")?;
        Ok(())
    }

    /// Start a new server with `ssl=on` and `tls`'s certificate, that lets TCP clients in only
    /// over TLS (`hostssl` in pg_hba.conf) and with `tether`'s password ([`TLS_PASSWORD`],
    /// SCRAM, so the client's channel binding is exercised too). [`TestServer::sql`] still works:
    /// it uses the Unix socket.
    pub fn start_tls(tls: &TestTls) -> anyhow::Result<Self> {
        let mut server = Self::empty()?;
        server.tls_only = true;
        server.initdb(&["--auth-local=trust", "--auth-host=scram-sha-256"])?;
        let (cert, key) = (
            server.dir().join("server.crt"),
            server.dir().join("server.key"),
        );
        std::fs::write(&cert, &tls.cert_pem)?;
        std::fs::write(&key, &tls.key_pem)?;
        // The server refuses a key that others can read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if let Some(user) = server.run_as {
            let status = Command::new("chown")
                .arg(user)
                .args([&cert, &key])
                .status()?;
            anyhow::ensure!(status.success(), "chown {user} {}", key.display());
        }
        let conf = server.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert.display(),
            key.display()
        ));
        std::fs::write(&conf, text)?;
        let hba = server.data().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba)?;
        let text: Vec<String> = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}"),
                None => l.to_string(),
            })
            .collect();
        std::fs::write(&hba, text.join("\n") + "\n")?;
        server.pg_ctl_start()?;
        server.sql(
            "postgres",
            &format!("ALTER ROLE tether PASSWORD '{TLS_PASSWORD}'"),
        )?;
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
            tls_only: false,
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

    /// The URL of database `db` on this server (over TCP; with [`TestServer::start_tls`], with
    /// the password and no TLS parameters: the test adds those).
    pub fn url(&self, db: &str) -> String {
        if self.tls_only {
            return format!(
                "postgres://tether:{TLS_PASSWORD}@127.0.0.1:{}/{db}",
                self.port
            );
        }
        format!("postgres://tether@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` over the Unix socket, which needs neither TLS nor a password.
    fn socket_url(&self, db: &str) -> String {
        let dir = self.dir.path().display().to_string().replace('/', "%2F");
        format!("postgres://tether@{dir}:{}/{db}", self.port)
    }

    /// Create a new, empty database and return its URL.
    pub fn create_db(&self, name: &str) -> anyhow::Result<String> {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// Run `sql` in database `db`, on a thread of its own: the blocking client cannot run on
    /// a thread that drives async tasks, as the end-to-end tests' threads do.
    pub fn sql(&self, db: &str, sql: &str) -> anyhow::Result<()> {
        let (url, sql) = (self.socket_url(db), sql.to_string());
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
