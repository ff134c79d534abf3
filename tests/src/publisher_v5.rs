//! A real MQTT 5 publisher (rumqttc v5): the device stand-in for tests of
//! the proxy's MQTT 5 device side. Same contract as [`crate::Publisher`]:
//! `connect` returns after CONNACK and [`PublisherV5::wait_acked`] waits
//! until every QoS 1/2 publish got its PUBACK or PUBCOMP.

use std::time::Duration;

use anyhow::Result;
use rumqttc::v5::{AsyncClient, MqttOptions};

use crate::client_core::V5;
use crate::publisher::{MqttPublisher, REQUEST_CAPACITY};
use crate::subscriber::MAX_PACKET_SIZE;
use crate::unique_client_id;

/// A connected MQTT 5 publisher; its event loop task is aborted when dropped.
pub type PublisherV5 = MqttPublisher<V5>;

impl MqttPublisher<V5> {
    /// Clean start, unique client id, 60 s keepalive, on 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> Result<Self> {
        let client_id = unique_client_id("pub5");
        let mut options = MqttOptions::new(client_id.clone(), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok());
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        Self::start(client, eventloop, client_id).await
    }
}
