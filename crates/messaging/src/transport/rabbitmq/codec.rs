//! The envelope in AMQP terms: ids and type in the standard properties, the rest in headers.

use crate::envelope::{Envelope, UnreadableEnvelope};
use crate::transport::headers;
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use uuid::Uuid;

const PERSISTENT: u8 = 2;
const JSON: &str = "application/json";

pub(super) fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

pub(super) fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let table = properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

pub(super) fn header_number(properties: &BasicProperties, name: &str) -> Option<i64> {
    let table = properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The envelope in AMQP terms: ids and type in the standard properties, the rest in headers.
pub(super) fn properties_of(envelope: &Envelope) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert("occurred-at".into(), long_string(&envelope.occurred_at.to_rfc3339()));
    if let Some(causation) = envelope.causation_id {
        table.insert(headers::CAUSATION_ID.into(), long_string(&causation.to_string()));
    }
    if let Some(traceparent) = &envelope.traceparent {
        table.insert(headers::TRACEPARENT.into(), long_string(traceparent));
    }
    BasicProperties::default()
        .with_message_id(envelope.message_id.to_string().into())
        .with_type(envelope.message_type.clone().into())
        .with_correlation_id(ShortString::from(envelope.correlation_id.clone()))
        .with_timestamp(envelope.occurred_at.timestamp().max(0) as u64)
        .with_content_type(JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(table)
}

/// Reads an envelope back; any missing or malformed part makes the message unreadable.
pub(super) fn envelope_from(properties: &BasicProperties, body: &[u8]) -> Result<Envelope, UnreadableEnvelope> {
    use UnreadableEnvelope::Missing;
    let uuid = |field: &'static str, text: &str| {
        Uuid::parse_str(text).map_err(|source| UnreadableEnvelope::NotAUuid { field, value: text.to_owned(), source })
    };
    let message_id = uuid("message id", properties.message_id().as_ref().ok_or(Missing("message id"))?.as_str())?;
    let message_type = properties.kind().as_ref().ok_or(Missing("message type"))?.as_str().to_owned();
    let correlation_id = properties.correlation_id().as_ref().ok_or(Missing("correlation id"))?.as_str().to_owned();
    let causation_id =
        header_text(properties, headers::CAUSATION_ID).map(|text| uuid("causation id", &text)).transpose()?;
    let occurred_at = header_text(properties, "occurred-at")
        .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| properties.timestamp().and_then(|secs| DateTime::from_timestamp(secs as i64, 0)))
        .ok_or(Missing("occurrence time"))?;
    let payload = serde_json::from_slice(body).map_err(UnreadableEnvelope::NotJson)?;
    Ok(Envelope {
        message_id,
        message_type,
        correlation_id,
        causation_id,
        occurred_at,
        traceparent: header_text(properties, headers::TRACEPARENT),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Causation, TraceParent};

    #[test]
    fn every_contract_message_survives_the_amqp_mapping() {
        for (message_type, payload) in contracts::samples() {
            let mut envelope = Causation::root("order-7", TraceParent::new_root())
                .envelope(&contracts::order::OrderShipped { order_id: Uuid::nil() });
            envelope.message_type = message_type.to_owned();
            envelope.payload = payload;
            envelope.causation_id = Some(Uuid::now_v7());
            let body = serde_json::to_vec(&envelope.payload).unwrap();
            let decoded = envelope_from(&properties_of(&envelope), &body).unwrap();
            assert_eq!(decoded, envelope, "{message_type}");
        }
    }

    #[test]
    fn a_message_without_its_envelope_is_unreadable() {
        let reason = envelope_from(&BasicProperties::default(), b"{}").unwrap_err();
        assert!(matches!(reason, UnreadableEnvelope::Missing("message id")), "{reason:?}");
        assert_eq!(reason.to_string(), "no message id");
        let envelope = Causation::root("x", TraceParent::new_root())
            .envelope(&contracts::order::OrderShipped { order_id: Uuid::nil() });
        let reason = envelope_from(&properties_of(&envelope), b"not json").unwrap_err();
        assert!(matches!(reason, UnreadableEnvelope::NotJson(_)), "{reason:?}");
        assert!(reason.to_string().starts_with("body is not JSON"), "{reason}");
    }
}
