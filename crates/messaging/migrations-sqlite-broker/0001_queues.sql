-- The embedded broker (messaging::transport::sqlite): RabbitMQ's queues and bindings as tables.

-- Which queues a message type is routed to (what a consumer declared).
CREATE TABLE bindings (
    message_type TEXT NOT NULL,
    queue        TEXT NOT NULL,
    PRIMARY KEY (message_type, queue)
) STRICT, WITHOUT ROWID;

-- Every message of every queue, one row per queue it was routed to. A row leaves its queue when
-- acknowledged (deleted) or dead-lettered (moved to `<queue>.error` with the failure).
CREATE TABLE messages (
    seq              INTEGER PRIMARY KEY,
    queue            TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    message_type     TEXT    NOT NULL,
    correlation_id   TEXT    NOT NULL,
    causation_id     TEXT,
    occurred_at      TEXT    NOT NULL,
    traceparent      TEXT,
    payload          TEXT    NOT NULL,
    -- Delivered to a consumer and not settled yet.
    in_hand          INTEGER NOT NULL DEFAULT 0 CHECK (in_hand IN (0, 1)),
    -- Delivered before without being settled.
    redelivered      INTEGER NOT NULL DEFAULT 0 CHECK (redelivered IN (0, 1)),
    -- Set in error queues: why it failed, after how many attempts, when, and where.
    failure_reason   TEXT,
    failure_attempts INTEGER,
    failed_at        TEXT,
    original_queue   TEXT
) STRICT;

-- What a consumer takes next: the oldest row of its queue that nobody holds.
CREATE INDEX messages_waiting ON messages (queue, seq) WHERE in_hand = 0;
-- What a restart hands back.
CREATE INDEX messages_in_hand ON messages (seq) WHERE in_hand = 1;
