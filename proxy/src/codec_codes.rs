//! Reason and return codes: the wire enums of rumqttc's MQTT 3.1.1 and 5 codecs mapped to
//! and from the single byte the proxy's [`Packet`](super::Packet) carries.

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use super::{qos_u8_v5, qos_v5, SUBACK_FAILURE};

pub(super) fn v5_suback_code(c: v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as S;
    match c {
        S::Success(q) => qos_u8_v5(q),
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
        S::Failure | S::Unspecified => SUBACK_FAILURE,
    }
}

pub(super) fn v5_suback_reason(c: u8) -> v5::SubscribeReasonCode {
    use v5::SubscribeReasonCode as S;
    match c {
        0..=2 => S::Success(qos_v5(c)),
        0x83 => S::ImplementationSpecific,
        0x87 => S::NotAuthorized,
        0x8F => S::TopicFilterInvalid,
        0x91 => S::PkidInUse,
        0x97 => S::QuotaExceeded,
        0x9E => S::SharedSubscriptionsNotSupported,
        0xA1 => S::SubscriptionIdNotSupported,
        0xA2 => S::WildcardSubscriptionsNotSupported,
        _ => S::Unspecified,
    }
}

/// UNSUBACK reason code: no subscription existed.
pub const UNSUBACK_NO_SUBSCRIPTION: u8 = 0x11;

pub(super) fn v5_unsuback_code(r: v5::UnsubAckReason) -> u8 {
    use v5::UnsubAckReason as U;
    match r {
        U::Success => 0x00,
        U::NoSubscriptionExisted => UNSUBACK_NO_SUBSCRIPTION,
        U::UnspecifiedError => 0x80,
        U::ImplementationSpecificError => 0x83,
        U::NotAuthorized => 0x87,
        U::TopicFilterInvalid => 0x8F,
        U::PacketIdentifierInUse => 0x91,
    }
}

pub(super) fn v5_unsuback_reason(c: u8) -> v5::UnsubAckReason {
    use v5::UnsubAckReason as U;
    match c {
        0x00 => U::Success,
        UNSUBACK_NO_SUBSCRIPTION => U::NoSubscriptionExisted,
        0x83 => U::ImplementationSpecificError,
        0x87 => U::NotAuthorized,
        0x8F => U::TopicFilterInvalid,
        0x91 => U::PacketIdentifierInUse,
        _ => U::UnspecifiedError,
    }
}

pub(super) fn v5_disconnect_code(r: v5::DisconnectReasonCode) -> u8 {
    use v5::DisconnectReasonCode as D;
    match r {
        D::NormalDisconnection => 0x00,
        D::DisconnectWithWillMessage => 0x04,
        D::MalformedPacket => 0x81,
        D::ProtocolError => 0x82,
        D::ServerShuttingDown => 0x8B,
        D::KeepAliveTimeout => 0x8D,
        D::SessionTakenOver => 0x8E,
        D::PacketTooLarge => 0x95,
        _ => 0x80,
    }
}

/// PUBACK reason code; "no matching subscribers" (0x10) is a success for the proxy (0).
pub(super) fn puback_code(r: v5::PubAckReason) -> u8 {
    use v5::PubAckReason as R;
    match r {
        R::Success | R::NoMatchingSubscribers => 0,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

pub(super) fn puback_reason(code: u8) -> v5::PubAckReason {
    use v5::PubAckReason as R;
    match code {
        0 => R::Success,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x90 => R::TopicNameInvalid,
        0x91 => R::PacketIdentifierInUse,
        0x97 => R::QuotaExceeded,
        0x99 => R::PayloadFormatInvalid,
        _ => R::UnspecifiedError,
    }
}

pub(super) fn pubrec_code(r: v5::PubRecReason) -> u8 {
    use v5::PubRecReason as R;
    match r {
        R::Success | R::NoMatchingSubscribers => 0,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

pub(super) fn pubrec_reason(code: u8) -> v5::PubRecReason {
    use v5::PubRecReason as R;
    match code {
        0 => R::Success,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x90 => R::TopicNameInvalid,
        0x91 => R::PacketIdentifierInUse,
        0x97 => R::QuotaExceeded,
        0x99 => R::PayloadFormatInvalid,
        _ => R::UnspecifiedError,
    }
}

pub(super) fn v5_connack_code(c: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 0x84,
        C::BadClientId | C::ClientIdentifierNotValid => 0x85,
        C::ServiceUnavailable | C::ServerUnavailable => 0x88,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::QuotaExceeded => 0x97,
        _ => 0x80,
    }
}

pub(super) fn v5_connack_reason(code: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match code {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x95 => C::PacketTooLarge,
        0x9F => C::ConnectionRateExceeded,
        _ => C::UnspecifiedError,
    }
}

/// v4 CONNACK return code for a v5-style reason.
pub(super) fn v4_connack_code(code: u8) -> v4::ConnectReturnCode {
    match code {
        0x00 => v4::ConnectReturnCode::Success,
        0x01 | 0x84 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x02 | 0x85 => v4::ConnectReturnCode::BadClientId,
        0x04 | 0x86 => v4::ConnectReturnCode::BadUserNamePassword,
        0x05 | 0x87 => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

pub(super) fn v5_disconnect_reason(code: u8) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as D;
    match code {
        0x00 => D::NormalDisconnection,
        0x04 => D::DisconnectWithWillMessage,
        0x81 => D::MalformedPacket,
        0x82 => D::ProtocolError,
        0x8B => D::ServerShuttingDown,
        0x8D => D::KeepAliveTimeout,
        0x8E => D::SessionTakenOver,
        0x93 => D::ReceiveMaximumExceeded,
        0x95 => D::PacketTooLarge,
        0x96 => D::MessageRateTooHigh,
        _ => D::UnspecifiedError,
    }
}
