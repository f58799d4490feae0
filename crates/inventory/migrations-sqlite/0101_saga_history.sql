-- Each saga's changes with their times, oldest first (its timeline), as in ../migrations/0101:
-- state changes `{"at": ..., "state": "reserved"}` and line changes
-- `{"at": ..., "productId": 4, "status": "reserved"}`. Sagas saved before this column existed
-- have an empty history.
--
-- PostgreSQL's 0102 (product names without control characters) has no twin here: the embedded mode
-- arrived with the text rules, so every SQLite database is written only by code that refuses such
-- text, and none can hold such a name.
ALTER TABLE reservation_sagas ADD COLUMN history TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(history));
