//! The invariants only the inventory database can show, once the system is quiet, in both SQL
//! dialects: `harness chaos` checks them in PostgreSQL, `harness crash` in the embedded mode's
//! SQLite file. Each query lists what breaks the invariant (empty when it holds).

/// One invariant and the query of each dialect that finds what breaks it.
pub struct Check {
    pub what: &'static str,
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

pub const INVENTORY: [Check; 5] = [
    Check {
        what: "a saga is still reserving",
        postgres: "SELECT order_id::text FROM reservation_sagas WHERE state = 'reserving'",
        sqlite: "SELECT order_id FROM reservation_sagas WHERE state = 'reserving'",
    },
    Check {
        what: "a product's reserved count differs from its reservations",
        postgres: "SELECT p.id::text FROM products p LEFT JOIN reservations r ON r.product_id = p.id \
                   GROUP BY p.id HAVING p.reserved <> coalesce(sum(r.quantity), 0)",
        sqlite: "SELECT CAST(p.id AS TEXT) FROM products p LEFT JOIN reservations r ON r.product_id = p.id \
                 GROUP BY p.id HAVING p.reserved <> coalesce(sum(r.quantity), 0)",
    },
    Check {
        what: "a product is oversold or negative",
        postgres: "SELECT id::text FROM products WHERE reserved > stock OR stock < 0 OR reserved < 0",
        sqlite: "SELECT CAST(id AS TEXT) FROM products WHERE reserved > stock OR stock < 0 OR reserved < 0",
    },
    Check {
        what: "a reservation is not held by a reserved saga line of the same quantity",
        postgres: "SELECT r.order_id::text || '/' || r.product_id FROM reservations r \
                   LEFT JOIN reservation_sagas s ON s.order_id = r.order_id \
                   WHERE s.state IS DISTINCT FROM 'reserved' OR NOT EXISTS ( \
                       SELECT 1 FROM jsonb_array_elements(s.lines) l \
                       WHERE (l->>'productId')::bigint = r.product_id AND (l->>'quantity')::int = r.quantity \
                         AND l->>'status' = 'reserved')",
        sqlite: "SELECT r.order_id || '/' || r.product_id FROM reservations r \
                 LEFT JOIN reservation_sagas s ON s.order_id = r.order_id \
                 WHERE s.state IS NOT 'reserved' OR NOT EXISTS ( \
                     SELECT 1 FROM json_each(s.lines) l \
                     WHERE l.value ->> '$.productId' = r.product_id AND l.value ->> '$.quantity' = r.quantity \
                       AND l.value ->> '$.status' = 'reserved')",
    },
    Check {
        what: "a reserved saga line has no reservation",
        postgres: "SELECT s.order_id::text || '/' || (l->>'productId') \
                   FROM reservation_sagas s, jsonb_array_elements(s.lines) l \
                   WHERE l->>'status' = 'reserved' AND NOT EXISTS ( \
                       SELECT 1 FROM reservations r \
                       WHERE r.order_id = s.order_id AND r.product_id = (l->>'productId')::bigint)",
        sqlite: "SELECT s.order_id || '/' || (l.value ->> '$.productId') FROM reservation_sagas s, json_each(s.lines) l \
                 WHERE l.value ->> '$.status' = 'reserved' AND NOT EXISTS ( \
                     SELECT 1 FROM reservations r \
                     WHERE r.order_id = s.order_id AND r.product_id = l.value ->> '$.productId')",
    },
];
