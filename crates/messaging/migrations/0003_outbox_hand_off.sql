-- A row handed off to a consumer of the same service (messaging::hand_off) is stamped sent once
-- that consumer has applied it. Until then its deliver_after is the end of its lease: the relay
-- publishes it only if the lease runs out, found by its periodic sweep.
ALTER TABLE outbox ADD COLUMN handed_off boolean NOT NULL DEFAULT false;

-- Commits that wrote only handed-off rows wake no relay; a lease is no schedule. A statement
-- whose other rows are all scheduled for later says so (`later:` before the due time), so that
-- the relay notes the time without claiming: nothing is due yet.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE NOT handed_off) THEN
        PERFORM pg_notify('outbox',
            CASE WHEN EXISTS (SELECT 1 FROM inserted WHERE NOT handed_off AND deliver_after <= now())
                 THEN '' ELSE 'later:' END
            || coalesce(
                (SELECT (extract(epoch FROM min(deliver_after)) * 1000000)::bigint::text
                 FROM inserted WHERE deliver_after > now() AND NOT handed_off),
                ''));
    END IF;
    RETURN NULL;
END
$$;
