-- Orders: one row per order, lines as JSON (they change only while the order is a draft, and
-- are always read and written with the order).
CREATE TABLE orders (
    id            uuid PRIMARY KEY,
    customer_id   uuid        NOT NULL,
    description   text,
    status        text        NOT NULL
        CHECK (status IN ('draft', 'placed', 'confirmed', 'rejected', 'shipped', 'cancelled')),
    status_reason text,
    lines         jsonb       NOT NULL DEFAULT '[]',
    total         numeric(16, 2) NOT NULL CHECK (total >= 0),
    created_at    timestamptz NOT NULL,
    placed_at     timestamptz,
    -- When inventory's answer confirmed or rejected the order.
    decided_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    version       bigint      NOT NULL CHECK (version > 0),
    CHECK ((status IN ('rejected', 'cancelled')) = (status_reason IS NOT NULL))
);

-- Listing newest first, by customer and/or status.
CREATE INDEX orders_by_customer ON orders (customer_id, id DESC);
CREATE INDEX orders_by_status ON orders (status, id DESC);

-- Keys under which clients created orders, so a retried create returns the same order.
CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders (id),
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The order service's copy of inventory's catalog: where line prices come from.
CREATE TABLE catalog_products (
    product_id bigint PRIMARY KEY CHECK (product_id > 0),
    name       text           NOT NULL,
    price      numeric(16, 2) NOT NULL CHECK (price > 0),
    -- The inventory product's version this copy reflects; older news never overwrites newer.
    version    bigint         NOT NULL,
    updated_at timestamptz    NOT NULL DEFAULT now()
);
