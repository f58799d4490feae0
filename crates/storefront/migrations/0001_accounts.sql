-- The storefront's own accounts: who may sign in, with what password, as what role.
-- Plain, portable SQL: an embedded (SQLite) adapter can use the same table.
CREATE TABLE accounts (
    -- The customer's id in the services (a UUIDv7); an admin's token names it too.
    id            uuid PRIMARY KEY,
    -- Lowercased: an address is unique whatever its case.
    email         text        NOT NULL UNIQUE,
    -- PHC string ($argon2id$v=19$...).
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('customer', 'admin')),
    created_at    timestamptz NOT NULL
);
