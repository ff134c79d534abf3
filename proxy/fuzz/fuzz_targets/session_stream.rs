//! A whole device session fed arbitrary bytes over an in-memory stream: CONNECT parsing,
//! authentication (anonymous allowed), the packet loop of both protocol versions, and
//! shutdown. No brokers, so nothing leaves the process. The session must end (EOF after
//! the input) without panicking; its output is drained so it never blocks on writes.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mqtt_proxy::auth::{AuthOptions, Authorizer};
use mqtt_proxy::brokerset::{BrokerSet, Defaults};
use mqtt_proxy::config::Config;
use mqtt_proxy::registry::Registry;
use mqtt_proxy::session::{self, Shared};
use mqtt_proxy::transport::{Conn, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

struct World {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = Config::default();
        config.session.connect_timeout = Duration::from_millis(50);
        config.session.drain_timeout = Duration::from_millis(10);
        config.session.spool_dir = None;
        let defaults = Defaults {
            queue: config.queue,
            budget: Arc::new(mqtt_proxy::queue::Budget::new(1 << 20)),
        };
        let set = BrokerSet::build(&[], defaults, None).expect("empty set");
        let (btx, brx) = watch::channel(Arc::new(set));
        let (stx, srx) = watch::channel(false);
        // Keep the senders alive for the process: a closed channel reads as shutdown.
        std::mem::forget((btx, stx));
        let auth = Authorizer::new(&AuthOptions {
            users_file: None,
            allow_anonymous: true,
            failures_per_minute: 0,
        })
        .expect("authorizer");
        let shared = Arc::new(Shared {
            brokers: brx,
            registry: Arc::new(Registry::default()),
            opts: config.session.clone(),
            shutdown: srx,
            auth: Arc::new(auth),
        });
        World { rt, shared }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let shared = w.shared.clone();
    w.rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let conn = Conn {
            io: Box::new(server),
            peer: ([127, 0, 0, 1], 1).into(),
            transport: Transport::Tcp,
            cert_identity: None,
        };
        let session = tokio::spawn(session::run(conn, shared));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let feed = async {
            let _ = wr.write_all(data).await;
            let _ = wr.shutdown().await;
        };
        let drain = async {
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let bounded = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(feed, drain);
        });
        assert!(bounded.await.is_ok(), "session did not end after EOF");
        drop(client);
        let _ = session.await;
    });
});
