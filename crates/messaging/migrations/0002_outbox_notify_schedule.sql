-- The notification that wakes the relays also says when the earliest row the statement
-- scheduled for later falls due (microseconds since the epoch; empty if none): a relay that
-- hears every commit then knows when to wake without asking the table after each batch.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', coalesce(
        (SELECT (extract(epoch FROM min(deliver_after)) * 1000000)::bigint::text
         FROM inserted WHERE deliver_after > now()),
        ''));
    RETURN NULL;
END
$$;
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
