//! Tests of the harness itself, against real mosquitto: before proxy tests
//! trust a broker, subscriber, publisher or log counter, each is shown here to
//! do what it claims (including the negative cases: no will on a clean
//! disconnect, nothing delivered while a broker is paused).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mqtt_proxy_tests::{
    free_port, mosquitto_pub, wait_until, Mosquitto, Publisher, Received, Subscriber, SubscriberV5,
};
use rumqttc::MqttOptions;

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing happens" must hold in negative checks.
const QUIET: Duration = Duration::from_millis(300);

fn topics_and_qos(messages: &[Received]) -> BTreeSet<(String, u8)> {
    messages.iter().map(|m| (m.topic.clone(), m.qos)).collect()
}

fn set(items: &[(&str, u8)]) -> BTreeSet<(String, u8)> {
    items.iter().map(|(t, q)| ((*t).to_owned(), *q)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_start_in_parallel_on_distinct_ports() {
    let (a, b, c) = tokio::try_join!(Mosquitto::start(), Mosquitto::start(), Mosquitto::start())
        .expect("three brokers should start");
    let ports: BTreeSet<u16> = [a.port(), b.port(), c.port()].into();
    assert_eq!(ports.len(), 3, "each broker gets its own port");

    for broker in [&a, &b, &c] {
        let sub = Subscriber::connect(broker.port(), "p/#", 1)
            .await
            .expect("subscribe");
        mosquitto_pub(broker.port(), "p/x", &broker.port().to_string(), 1, &[]).expect("publish");
        let got = sub.wait_for_count(1, WAIT).await;
        assert_eq!(got.len(), 1, "broker on {} delivers", broker.port());
        assert_eq!(got[0].payload, broker.port().to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_gets_qos_0_1_2_from_publisher_and_mosquitto_pub() {
    let broker = Mosquitto::start().await.expect("broker");
    let sub2 = Subscriber::connect(broker.port(), "q/#", 2)
        .await
        .expect("qos 2 subscriber");
    let sub1 = Subscriber::connect(broker.port(), "q/#", 1)
        .await
        .expect("qos 1 subscriber");

    let publisher = Publisher::connect(broker.port()).await.expect("publisher");
    for qos in 0..=2u8 {
        publisher
            .publish(&format!("q/rumqttc/{qos}"), format!("r{qos}"), qos, false)
            .await
            .expect("publish");
    }
    publisher.wait_acked(WAIT).await.expect("QoS 1 and 2 acked");
    assert_eq!(publisher.unacked(), 0);
    for qos in 0..=2u8 {
        mosquitto_pub(
            broker.port(),
            &format!("q/cli/{qos}"),
            &format!("c{qos}"),
            qos,
            &[],
        )
        .expect("mosquitto_pub");
    }

    let got = sub2.wait_for_count(6, WAIT).await;
    assert_eq!(
        topics_and_qos(&got),
        set(&[
            ("q/rumqttc/0", 0),
            ("q/rumqttc/1", 1),
            ("q/rumqttc/2", 2),
            ("q/cli/0", 0),
            ("q/cli/1", 1),
            ("q/cli/2", 2),
        ])
    );
    let rumqttc_payloads: Vec<_> = got
        .iter()
        .filter(|m| m.topic.starts_with("q/rumqttc/"))
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(
        rumqttc_payloads,
        ["r0", "r1", "r2"],
        "one publisher's order is kept"
    );
    assert!(got.iter().all(|m| !m.retain));

    // Delivery QoS is min(publish, subscription).
    let got = sub1.wait_for_count(6, WAIT).await;
    assert_eq!(
        topics_and_qos(&got),
        set(&[
            ("q/rumqttc/0", 0),
            ("q/rumqttc/1", 1),
            ("q/rumqttc/2", 1),
            ("q/cli/0", 0),
            ("q/cli/1", 1),
            ("q/cli/2", 1),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_a_late_subscriber() {
    let broker = Mosquitto::start().await.expect("broker");
    let publisher = Publisher::connect(broker.port()).await.expect("publisher");
    publisher
        .publish("ret/state", "on", 1, true)
        .await
        .expect("publish");
    publisher.wait_acked(WAIT).await.expect("acked");
    mosquitto_pub(broker.port(), "ret/cli", "cli-on", 0, &["-r"]).expect("mosquitto_pub -r");
    // mosquitto_pub exits after its publish was written; the broker stores
    // it on read, so a subscriber may still race it: wait for the log line.
    assert!(
        wait_until(WAIT, || broker.count_in_log("'ret/cli'") >= 1).await,
        "broker logged the retained publish"
    );

    let late = Subscriber::connect(broker.port(), "ret/#", 1)
        .await
        .expect("late subscriber");
    let got = late.wait_for_count(2, WAIT).await;
    let mut retained: Vec<_> = got.iter().map(|m| (m.topic.as_str(), m.retain)).collect();
    retained.sort_unstable();
    assert_eq!(retained, [("ret/cli", true), ("ret/state", true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_delivers_nothing_until_resumed() {
    let broker = Mosquitto::start().await.expect("broker");
    let sub = Subscriber::connect(broker.port(), "pause/#", 1)
        .await
        .expect("subscriber");
    let publisher = Publisher::connect(broker.port()).await.expect("publisher");

    broker.pause().expect("SIGSTOP");
    publisher
        .publish("pause/x", "held", 1, false)
        .await
        .expect("publish");
    let (acked, got) = tokio::join!(publisher.wait_acked(QUIET), sub.wait_for_count(1, QUIET));
    assert!(acked.is_err(), "a paused broker does not ack");
    assert!(got.is_empty(), "a paused broker delivers nothing: {got:?}");

    broker.resume().expect("SIGCONT");
    publisher
        .wait_acked(WAIT)
        .await
        .expect("acked after resume");
    let got = sub.wait_for_count(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_restarts_on_the_same_port_and_clients_come_back() {
    let mut broker = Mosquitto::start().await.expect("broker");
    let port = broker.port();
    let sub = Subscriber::connect(port, "r/#", 1)
        .await
        .expect("subscriber");
    mosquitto_pub(port, "r/before", "1", 1, &[]).expect("publish before kill");
    assert_eq!(sub.wait_for_count(1, WAIT).await.len(), 1);

    broker.kill().expect("kill");
    assert!(broker.pid().is_none());
    assert!(
        tokio::net::TcpStream::connect(broker.addr()).await.is_err(),
        "port closed after kill"
    );
    assert!(
        mosquitto_pub(port, "r/dead", "x", 0, &[]).is_err(),
        "no broker, no publish"
    );

    broker.restart().await.expect("restart");
    assert_eq!(broker.port(), port, "same port after restart");
    sub.wait_for_subacks(2, WAIT)
        .await
        .expect("subscriber reconnected and resubscribed");
    mosquitto_pub(port, "r/after", "2", 1, &[]).expect("publish after restart");

    let got = sub.wait_for_count(2, WAIT).await;
    let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["r/before", "r/after"]);
    assert_eq!(
        broker.client_connects(sub.client_id()),
        2,
        "the log spans both runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abrupt_drop_but_not_on_clean_disconnect() {
    let broker = Mosquitto::start().await.expect("broker");
    let sub = Subscriber::connect(broker.port(), "will/#", 1)
        .await
        .expect("subscriber");

    let polite = Publisher::builder(broker.port())
        .last_will("will/polite", "must not appear", 1, false)
        .connect()
        .await
        .expect("polite publisher");
    polite.disconnect().await.expect("clean disconnect");

    let crashing = Publisher::builder(broker.port())
        .client_id("crashing-device")
        .keep_alive(Duration::from_secs(5))
        .last_will("will/crashing", "gone", 1, false)
        .connect()
        .await
        .expect("crashing publisher");
    crashing.drop_abruptly().await;

    assert_eq!(sub.wait_for_count(1, WAIT).await.len(), 1, "will arrives");
    let got = sub.wait_quiet(QUIET, WAIT).await;
    assert_eq!(got.len(), 1, "only the abrupt client's will: {got:?}");
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..]),
        ("will/crashing", &b"gone"[..])
    );
    assert_eq!(
        broker.count_in_log("Received DISCONNECT from crashing-device"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_counts_each_connect_of_a_client() {
    let broker = Mosquitto::start().await.expect("broker");
    for _ in 0..3 {
        let publisher = Publisher::builder(broker.port())
            .client_id("counted")
            .connect()
            .await
            .expect("connect");
        publisher.disconnect().await.expect("disconnect");
    }
    // The broker may log the last DISCONNECT a moment after we sent it.
    assert!(
        wait_until(WAIT, || broker
            .count_in_log("Received DISCONNECT from counted")
            == 3)
        .await,
        "three DISCONNECTs logged:\n{}",
        broker.log_tail()
    );
    assert_eq!(broker.client_connects("counted"), 3);
    assert_eq!(
        broker.client_connects("count"),
        0,
        "client id matched whole, not as a prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_refuses_anonymous_and_wrong_credentials() {
    let broker = Mosquitto::builder()
        .user("alice", "s3cret")
        .start()
        .await
        .expect("broker");

    assert!(
        Subscriber::connect(broker.port(), "a/#", 0).await.is_err(),
        "anonymous refused"
    );
    let wrong = Publisher::builder(broker.port())
        .credentials("alice", "nope")
        .connect()
        .await;
    assert!(wrong.is_err(), "wrong password refused");

    let mut options = MqttOptions::new("alice-sub", "127.0.0.1", broker.port());
    options.set_credentials("alice", "s3cret");
    let sub = Subscriber::connect_with(options, "a/#", 1)
        .await
        .expect("alice subscribes");
    let publisher = Publisher::builder(broker.port())
        .credentials("alice", "s3cret")
        .connect()
        .await
        .expect("alice publishes");
    publisher
        .publish("a/1", "x", 1, false)
        .await
        .expect("publish");
    mosquitto_pub(
        broker.port(),
        "a/2",
        "y",
        1,
        &["-u", "alice", "-P", "s3cret"],
    )
    .expect("cli");
    assert!(
        mosquitto_pub(broker.port(), "a/3", "z", 1, &[]).is_err(),
        "cli without credentials"
    );
    assert_eq!(sub.wait_for_count(2, WAIT).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_from_config_lines_forwards_between_brokers() {
    let remote = Mosquitto::start().await.expect("remote broker");
    let local = Mosquitto::builder()
        .config_line("connection to_remote")
        .config_line(&format!("address 127.0.0.1:{}", remote.port()))
        .config_line("remote_clientid bridge-local")
        .config_line("topic bridged/# out 1")
        .start()
        .await
        .expect("local broker with bridge");
    let sub = Subscriber::connect(remote.port(), "bridged/#", 1)
        .await
        .expect("subscriber");
    // mosquitto names the bridge's local side "local.<remote_clientid>".
    assert!(
        wait_until(WAIT, || {
            local.count_in_log("Received CONNACK on connection local.bridge-local") >= 1
        })
        .await,
        "bridge connected:\n{}",
        local.log_tail()
    );
    assert_eq!(remote.client_connects("bridge-local"), 1);

    mosquitto_pub(local.port(), "bridged/x", "over", 1, &[]).expect("publish to local");
    let got = sub.wait_for_count(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscriber_receives_from_v311_and_v5_publishers() {
    let broker = Mosquitto::start().await.expect("broker");
    let sub = SubscriberV5::connect(broker.port(), "v5/#", 2)
        .await
        .expect("v5 subscriber");
    mosquitto_pub(broker.port(), "v5/a", "from 3.1.1", 2, &[]).expect("v3.1.1 publish");
    mosquitto_pub(broker.port(), "v5/b", "from 5", 1, &["-V", "mqttv5"]).expect("v5 publish");
    let got = sub.wait_for_count(2, WAIT).await;
    assert_eq!(topics_and_qos(&got), set(&[("v5/a", 2), ("v5/b", 1)]));
    assert_eq!(broker.client_connects(sub.client_id()), 1);
    assert!(
        broker
            .log()
            .contains(&format!("as {} (p5", sub.client_id())),
        "connected as MQTT 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_give_up_at_their_deadline() {
    let broker = Mosquitto::start().await.expect("broker");
    let sub = Subscriber::connect(broker.port(), "silent/#", 0)
        .await
        .expect("subscriber");

    let started = Instant::now();
    let got = sub.wait_for_count(1, QUIET).await;
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= QUIET && waited < QUIET * 3,
        "bounded wait took {waited:?}"
    );

    let started = Instant::now();
    assert!(!wait_until(QUIET, || false).await);
    assert!(started.elapsed() < QUIET * 3);

    // No broker on a fresh port: clients fail fast instead of retrying forever.
    let nobody = free_port();
    assert!(Subscriber::connect(nobody, "#", 0).await.is_err());
    assert!(Publisher::connect(nobody).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_port_in_use_fails_with_the_broker_log() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let err = Mosquitto::builder()
        .port(port)
        .start()
        .await
        .expect_err("port is taken");
    let message = format!("{err:#}");
    assert!(
        message.contains("Address already in use"),
        "error quotes the log: {message}"
    );
}
