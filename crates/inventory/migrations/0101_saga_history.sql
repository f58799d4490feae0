-- Each saga's changes with their times, oldest first (its timeline): state changes
-- `{"at": ..., "state": "reserved"}` and line changes `{"at": ..., "productId": 4, "status": "reserved"}`.
-- Sagas saved before this column existed have an empty history.
ALTER TABLE reservation_sagas ADD COLUMN history jsonb NOT NULL DEFAULT '[]';
