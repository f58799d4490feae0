-- Reliable messaging tables, shared by every service database.

-- Messages written in the same transaction as the state change that produced them.
-- The relay publishes rows whose deliver_after has come, then stamps sent_at.
CREATE TABLE outbox (
    message_id     uuid PRIMARY KEY,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    message_type   text        NOT NULL,
    correlation_id text        NOT NULL,
    causation_id   uuid,
    occurred_at    timestamptz NOT NULL,
    traceparent    text,
    payload        jsonb       NOT NULL,
    -- now() for immediate messages; a later time for scheduled ones (timeouts).
    deliver_after  timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz
);

-- What the relay claims, oldest first (it skips scheduled rows not yet due).
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
-- When the next scheduled row falls due.
CREATE INDEX outbox_due ON outbox (deliver_after) WHERE sent_at IS NULL;
-- What the cleanup deletes.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
-- A queue table churns: vacuum and analyze it often so claims stay cheap index scans.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- Wakes the relays when new rows commit (NOTIFY is delivered at commit, once per transaction).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Messages a consumer has applied, recorded in the same transaction as their effects.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);
