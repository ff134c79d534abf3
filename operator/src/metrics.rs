//! The operator's Prometheus metrics (`mqtt_proxy_operator_*`), served on `/metrics`.
//! Labels are bounded: the controller (two values: the resource kind it reconciles), an
//! error reason (a fixed set) and a watched kind (a fixed set).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Finished reconciliations by controller (`mqttproxy`, `mqttbroker`).
    pub reconciliations: IntCounterVec,
    /// Failed or invalid reconciliations by controller and reason.
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    /// 1 while this process holds the leader Lease (or runs without leader election).
    pub leader: IntGauge,
    /// Objects in the reflector stores, by kind (`MqttProxy`, `MqttBroker`).
    pub watched: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "mqtt_proxy_operator_reconciliations_total",
                "Reconciliations run, by controller",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "mqtt_proxy_operator_reconcile_errors_total",
                "Reconciliations that failed (API errors) or found an invalid spec, by reason",
            ),
            &["controller", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mqtt_proxy_operator_reconcile_duration_seconds",
                "Time one reconciliation took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "mqtt_proxy_operator_leader",
            "1 while this operator holds the leader Lease and reconciles, 0 on standby",
        )
        .expect("valid metric");
        let watched = IntGaugeVec::new(
            Opts::new(
                "mqtt_proxy_operator_watched_objects",
                "Objects the operator watches, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(watched.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Self {
            registry,
            reconciliations,
            errors,
            duration,
            leader,
            watched,
        }
    }

    /// Sets the watched-object count of `kind`.
    pub fn watching(&self, kind: &str, n: usize) {
        self.watched
            .with_label_values(&[kind])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one reconciliation of `controller`; the guard observes its duration on drop.
    pub fn start(&self, controller: &str) -> prometheus::HistogramTimer {
        self.reconciliations.with_label_values(&[controller]).inc();
        self.duration.with_label_values(&[controller]).start_timer()
    }

    /// Counts a failed reconciliation: an invalid spec (`reason` is its condition reason) or
    /// an API error (`Error::metric_reason`).
    pub fn invalid(&self, controller: &str, reason: &str) {
        self.errors.with_label_values(&[controller, reason]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        // Encoding our own well-formed families into a String cannot fail.
        let _ = enc.encode_utf8(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
