-- The aggregate table of the pgbench handler transaction (bench/handler_tx.sql): the columns
-- and checks of inventory's `products` (crates/inventory/migrations/0100_inventory.sql), with
-- 1000 rows. The outbox and inbox come from the real migration, loaded before this file.
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
INSERT INTO products (id, name, price, stock, version)
SELECT n, 'product ' || n, 1 + n % 50, 1000000000, 1 FROM generate_series(1, 1000) AS n;
VACUUM ANALYZE products;
