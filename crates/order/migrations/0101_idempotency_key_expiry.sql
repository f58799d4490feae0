-- Idempotency keys expire: the periodic cleanup deletes those used before a moment, and a key
-- whose last use has expired is taken over by the next order created under it.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
