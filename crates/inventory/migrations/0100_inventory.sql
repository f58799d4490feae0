CREATE SEQUENCE product_ids;

-- Products with their stock. `reserved` is the sum of the product's reservations, kept beside
-- `stock` so the database itself refuses any write that would oversell.
CREATE TABLE products (
    id          bigint PRIMARY KEY CHECK (id > 0),
    name        text           NOT NULL CHECK (length(name) > 0),
    description text           NOT NULL DEFAULT '',
    price       numeric(16, 2) NOT NULL CHECK (price > 0),
    stock       bigint         NOT NULL CHECK (stock >= 0),
    reserved    bigint         NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock),
    version     bigint         NOT NULL CHECK (version > 0),
    created_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now()
);

-- Units held for orders: at most one reservation per (product, order).
CREATE TABLE reservations (
    product_id bigint      NOT NULL REFERENCES products (id),
    order_id   uuid        NOT NULL,
    quantity   integer     NOT NULL CHECK (quantity > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, order_id)
);
CREATE INDEX reservations_by_order ON reservations (order_id);

-- ReserveStocks saga instances, one per order.
CREATE TABLE reservation_sagas (
    order_id           uuid PRIMARY KEY,
    state              text        NOT NULL
        CHECK (state IN ('reserving', 'reserved', 'failed', 'released', 'shipped')),
    lines              jsonb       NOT NULL,
    failure_reason     text,
    timeout_message_id uuid,
    started_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    version            bigint      NOT NULL CHECK (version > 0)
);
CREATE INDEX reservation_sagas_open ON reservation_sagas (state) WHERE state = 'reserving';
