-- The order service's tables in its embedded (SQLite) database: the same tables and constraints
-- as ../migrations. Ids are UUID text, amounts exact decimal text ("88.20"), times RFC 3339 text
-- in UTC with six fractional digits, lines JSON text.

-- Orders: one row per order, lines as JSON (they change only while the order is a draft, and
-- are always read and written with the order).
CREATE TABLE orders (
    id            TEXT PRIMARY KEY,
    customer_id   TEXT    NOT NULL,
    description   TEXT,
    status        TEXT    NOT NULL
        CHECK (status IN ('draft', 'placed', 'confirmed', 'rejected', 'shipped', 'cancelled')),
    status_reason TEXT,
    lines         TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(lines) AND json_type(lines) = 'array'),
    total         TEXT    NOT NULL CHECK (CAST(total AS REAL) >= 0),
    created_at    TEXT    NOT NULL,
    placed_at     TEXT,
    -- When inventory's answer confirmed or rejected the order.
    decided_at    TEXT,
    updated_at    TEXT    NOT NULL,
    version       INTEGER NOT NULL CHECK (version > 0),
    CHECK ((status IN ('rejected', 'cancelled')) = (status_reason IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- Listing newest first, by customer and/or status.
CREATE INDEX orders_by_customer ON orders (customer_id, id DESC);
CREATE INDEX orders_by_status ON orders (status, id DESC);

-- Keys under which clients created orders, so a retried create returns the same order.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders (id),
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- The order service's copy of inventory's catalog: where line prices come from.
CREATE TABLE catalog_products (
    product_id INTEGER PRIMARY KEY CHECK (product_id > 0),
    name       TEXT    NOT NULL,
    price      TEXT    NOT NULL CHECK (CAST(price AS REAL) > 0),
    -- The inventory product's version this copy reflects; older news never overwrites newer.
    version    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
) STRICT;
