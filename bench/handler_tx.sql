-- One message handler's transaction, as messaging::postgres::commit runs it for a product
-- (crates/messaging/src/postgres/mod.rs, crates/inventory/src/infrastructure/products.rs):
-- record the consumed message in the inbox, save the aggregate at its version, write the reply
-- to the outbox (~200-byte jsonb payload; the outbox trigger NOTIFYs the relays at commit).
\set id random(1, 1000)
\set quantity random(1, 3)
BEGIN;
INSERT INTO inbox (consumer, message_id) VALUES ('inventory.stock', gen_random_uuid()) ON CONFLICT DO NOTHING;
UPDATE products SET price = price, stock = stock, reserved = reserved, updated_at = now(), version = version + 1
    WHERE id = :id AND version = version;
INSERT INTO outbox (message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, payload)
    SELECT gen_random_uuid(), 'inventory.stock-reserved.v1', o::text, gen_random_uuid(), now(),
           '00-' || md5(o::text) || '-' || left(md5(:id::text), 16) || '-01',
           jsonb_build_object('orderId', o, 'productId', :id, 'quantity', :quantity,
                              'reservedAt', now(), 'saga', 'reserve-stocks', 'note', repeat('x', 30))
    FROM gen_random_uuid() AS o;
COMMIT;
