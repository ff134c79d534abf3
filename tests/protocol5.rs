//! MQTT 5 details on the device side (issue 14, item 9), each also a behaviour Eclipse
//! Paho's interoperability suite checks: reason codes, assigned client ids, the device's
//! Maximum Packet Size, subscription identifiers, topic aliases, request/response
//! properties, Retain As Published and message expiry, through the proxy in front of one
//! bidirectional MQTT 5 mosquitto.
