//! Device credentials never reach the logs: a second CONNECT on a connection (a protocol
//! error that closes it) used to be logged with its Debug output, password included.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use mqtt_proxy_tests::{Mosquitto, TestProxy};
use rumqttc::mqttbytes::v4;
use tokio::io::AsyncWriteExt;

use super::persistent::WAIT;

/// Everything this test binary logs at info and above (the level the leak was at).
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber);
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn connect_bytes(password: &str) -> Vec<u8> {
    let mut c = v4::Connect::new("secret-dev");
    c.set_login("user", password);
    let mut buf = bytes::BytesMut::new();
    v4::Packet::Connect(c)
        .write(&mut buf, 1 << 20)
        .expect("encode");
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_is_logged_without_its_password() {
    let log = captured();
    let broker = Mosquitto::start().await.expect("broker");
    let mut proxy = TestProxy::start(&[&broker], |_, _| {})
        .await
        .expect("proxy");
    let password = "hunter2-do-not-log";
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("tcp");
    s.write_all(&connect_bytes(password))
        .await
        .expect("connect");
    s.write_all(&connect_bytes(password))
        .await
        .expect("second connect");
    let text = || {
        String::from_utf8_lossy(&log.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    };
    assert!(
        mqtt_proxy_tests::wait_until(WAIT, || text().contains("unexpected")
            && text().contains("secret-dev"))
        .await,
        "the protocol error is logged"
    );
    assert!(
        !text().contains(password),
        "password in the log:\n{}",
        text()
    );
    proxy.shutdown().await.expect("shutdown");
}
