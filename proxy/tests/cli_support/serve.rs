//! A real mosquitto and the real `mqtt-proxy` serving, each on free loopback ports and
//! retried when another test won the race for a port.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, proxy_command, read_lossy, wait_until, Proc, WAIT};

/// A mosquitto on a free port with an anonymous listener and a full log.
pub struct Broker {
    dir: tempfile::TempDir,
    pub port: u16,
    _proc: Proc,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("mosquitto.log");
        for _ in 0..5 {
            let port = free_port();
            let mut config = String::new();
            if is_root() {
                // Otherwise mosquitto drops to an account that cannot write the log.
                config.push_str("user root\n");
            }
            config.push_str(&format!(
                "persistence false\nallow_anonymous true\nlog_dest file {}\nlog_type all\n\
                 connection_messages true\nlistener {port} 127.0.0.1\n",
                log.display()
            ));
            let conf = dir.path().join("mosquitto.conf");
            fs::write(&conf, config).expect("write mosquitto.conf");
            let _ = fs::remove_file(&log);
            let mut proc = Proc::spawn(
                "mosquitto",
                Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            // Ours is running (not another test's listener on a lost port race).
            let ready = wait_until(WAIT, || {
                proc.exited().is_some()
                    || (read_lossy(&log).contains(" running") && port_accepts(port))
            });
            if ready && proc.exited().is_none() {
                return Broker {
                    dir,
                    port,
                    _proc: proc,
                };
            }
            assert!(
                read_lossy(&log).contains("Address already in use"),
                "mosquitto did not start:\n{}",
                read_lossy(&log)
            );
        }
        panic!("no free port for mosquitto after 5 attempts");
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("mosquitto.log"))
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
}

/// `mqtt-proxy` serving on free ports, stderr (its log) in `<dir>/proxy.log`.
pub struct Served {
    pub proc: Proc,
    pub mqtt_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
}

/// Serves `data_dir` with anonymous devices allowed (the device-auth tests use
/// [`serve_with`] without it).
pub fn serve(data_dir: &Path) -> Served {
    serve_with(data_dir, &["--allow-anonymous"], &[])
}

pub fn serve_with(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let log = data_dir.join("proxy.log");
    for _ in 0..3 {
        let (mqtt_port, http_port) = (free_port(), free_port());
        let stderr = fs::File::create(&log).expect("create proxy.log");
        let mut cmd = proxy_command();
        cmd.envs(env.iter().copied());
        cmd.args(extra)
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proc = Proc::spawn("mqtt-proxy", &mut cmd);
        let ready = wait_until(WAIT, || {
            proc.exited().is_some() || read_lossy(&log).contains("mqtt-proxy ready")
        });
        if ready && proc.exited().is_none() {
            assert!(port_accepts(mqtt_port), "ready but MQTT port closed");
            return Served {
                proc,
                mqtt_port,
                http_port,
                log,
            };
        }
        let text = read_lossy(&log);
        assert!(
            text.contains("cannot listen"),
            "mqtt-proxy did not start:\n{text}"
        );
    }
    panic!("no free ports for mqtt-proxy after 3 attempts");
}
