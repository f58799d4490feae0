-- The inventory service's tables in its embedded (SQLite) database: the same tables and
-- constraints as ../migrations. Ids of orders are UUID text, amounts exact decimal text,
-- times RFC 3339 text in UTC with six fractional digits, saga lines JSON text.

-- Counters that hand out ids (SQLite has no sequences).
CREATE TABLE sequences (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO sequences (name, last) VALUES ('product_ids', 0);

-- Products with their stock. `reserved` is the sum of the product's reservations, kept beside
-- `stock` so the database itself refuses any write that would oversell.
CREATE TABLE products (
    id          INTEGER PRIMARY KEY CHECK (id > 0),
    name        TEXT    NOT NULL CHECK (length(name) > 0),
    description TEXT    NOT NULL DEFAULT '',
    price       TEXT    NOT NULL CHECK (CAST(price AS REAL) > 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock),
    version     INTEGER NOT NULL CHECK (version > 0),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
) STRICT;

-- Units held for orders: at most one reservation per (product, order).
CREATE TABLE reservations (
    product_id INTEGER NOT NULL REFERENCES products (id),
    order_id   TEXT    NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    created_at TEXT    NOT NULL,
    PRIMARY KEY (product_id, order_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX reservations_by_order ON reservations (order_id);

-- ReserveStocks saga instances, one per order.
CREATE TABLE reservation_sagas (
    order_id           TEXT PRIMARY KEY,
    state              TEXT    NOT NULL
        CHECK (state IN ('reserving', 'reserved', 'failed', 'released', 'shipped')),
    lines              TEXT    NOT NULL CHECK (json_valid(lines)),
    failure_reason     TEXT,
    timeout_message_id TEXT,
    started_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    version            INTEGER NOT NULL CHECK (version > 0)
) STRICT, WITHOUT ROWID;
CREATE INDEX reservation_sagas_open ON reservation_sagas (state) WHERE state = 'reserving';
