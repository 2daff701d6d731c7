//! The controller under test as a real process: started from the built binary against the test
//! cluster, probed over its admin port, stopped (SIGTERM) or killed (SIGKILL) by tests.
//!
//! On a cluster with a deployed controller (kind e2e: `DTE_E2E_CONTROLLER_NAMESPACE` set) tests
//! that only need "a controller" use that one instead of starting their own.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A running controller process.
pub struct Controller {
    child: Mutex<Option<Child>>,
    /// Admin address (`/healthz`, `/readyz`, `/metrics`).
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether a controller deployed outside the tests (kind e2e) serves this cluster.
pub fn deployed() -> bool {
    std::env::var_os("DTE_E2E_CONTROLLER_NAMESPACE").is_some_and(|v| !v.is_empty())
}

impl Controller {
    /// Starts `device-taint-eviction controller` with `args` against `kubeconfig` and waits
    /// until it reports ready. Logs go to a file under the cargo target tmp dir.
    pub async fn start(kubeconfig: &Path, args: &[&str]) -> Self {
        let controller = Self::spawn(kubeconfig, args);
        controller.wait_ready(Duration::from_secs(60)).await;
        controller
    }

    /// Starts the controller like [`Controller::start`] without waiting for it to be ready (it
    /// may never be, e.g. without permission to list a kind).
    pub fn spawn(kubeconfig: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("controller-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_device-taint-eviction"))
            .arg("controller")
            .arg(format!("--http-addr={addr}"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("DTE_LOG_LEVEL", "info,device_taint_eviction=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting the controller binary");
        reap_with_test_process(child.id());
        Self {
            child: Mutex::new(Some(child)),
            addr,
            log,
        }
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.get("/readyz").await.is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller not ready after {timeout:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A plain HTTP GET on the admin port: (status code, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(self.addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }

    /// The value of a metric line (name with labels as exposed), e.g.
    /// `device_taint_eviction_controller_pod_deletions_total`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = self.child.lock().expect("child").as_ref() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn stop(&self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(40)).await
    }

    /// SIGKILL (a crash): no cleanup, the lease is not released.
    pub async fn kill(&self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10)).await;
    }

    async fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut guard = self.child.lock().expect("child");
                match guard.as_mut().map(Child::try_wait) {
                    None => return None,
                    Some(Ok(Some(status))) => {
                        *guard = None;
                        return status.code();
                    }
                    Some(Ok(None)) => {}
                    Some(Err(e)) => panic!("waiting for the controller: {e}"),
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills the controller process as soon as the test process exits, however it exits: a reaper
/// reads a pipe whose only writer is this process, so its read returns the moment this process is
/// gone. (A controller left running even a second longer would act beside the next test binary's
/// controllers on a shared cluster.)
fn reap_with_test_process(pid: u32) {
    let Ok((reader, writer)) = std::io::pipe() else {
        return;
    };
    let script = r#"read -r _; kill -9 "$0" 2>/dev/null"#;
    let spawned = std::os::unix::process::CommandExt::process_group(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(pid.to_string())
            .stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        0,
    )
    .spawn();
    if spawned.is_ok() {
        // Never written to, never closed: the kernel closes it when this process exits. It is
        // close-on-exec, so no other child holds it open.
        std::mem::forget(writer);
    }
}

/// For tests that run controllers of their own: true (with a note on stderr) when a deployed
/// controller serves the cluster, since it would act on the test's pods as well.
pub fn skip_with_deployed_controller() -> bool {
    let skip = deployed();
    if skip {
        eprintln!("skipped: a deployed controller serves this cluster and would act too");
    }
    skip
}
