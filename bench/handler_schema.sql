-- Rows for the pgbench handler transaction (bench/handler_tx.sql): 1000 products in the real
-- inventory schema, loaded before this file with the real outbox and inbox.
INSERT INTO products (id, name, price, stock, version)
SELECT n, 'product ' || n, 1 + n % 50, 1000000000, 1 FROM generate_series(1, 1000) AS n;
VACUUM ANALYZE products;
