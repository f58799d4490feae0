-- Idempotency keys expire, as in ../migrations/0101: the periodic cleanup deletes those used
-- before a moment, and a key whose last use has expired is taken over by the next order created
-- under it.
--
-- PostgreSQL's 0102 (reasons without control characters) has no twin here: the embedded mode
-- arrived with the text rules, so every SQLite database is written only by code that refuses such
-- text, and none can hold such a reason.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
