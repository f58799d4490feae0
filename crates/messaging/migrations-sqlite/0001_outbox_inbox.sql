-- Reliable messaging tables of an embedded (SQLite) service database: the same tables as the
-- PostgreSQL ones in ../migrations. Ids are UUID text, timestamps RFC 3339 text in UTC with six
-- fractional digits (so that text order is time order), payloads JSON text.

-- Messages written in the same transaction as the state change that produced them.
-- The relay publishes rows whose deliver_after has come, then stamps sent_at.
CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY,
    message_id     TEXT NOT NULL UNIQUE,
    message_type   TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT,
    occurred_at    TEXT NOT NULL,
    traceparent    TEXT,
    payload        TEXT NOT NULL CHECK (json_valid(payload)),
    -- The commit time for immediate messages; a later time for scheduled ones (timeouts).
    deliver_after  TEXT NOT NULL,
    sent_at        TEXT
) STRICT;

-- What the relay claims, oldest first (it skips scheduled rows not yet due).
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
-- When the next scheduled row falls due.
CREATE INDEX outbox_due ON outbox (deliver_after) WHERE sent_at IS NULL;
-- What the cleanup deletes.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Messages a consumer has applied, recorded in the same transaction as their effects.
CREATE TABLE inbox (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX inbox_processed_at ON inbox (processed_at);
