-- The storefront's own accounts in the embedded mode (SQLite): the same table as
-- ../migrations/0001_accounts.sql. Ids are UUID text, times RFC 3339 text in UTC with six
-- fractional digits.
CREATE TABLE accounts (
    -- The customer's id in the services (a UUIDv7); an admin's token names it too.
    id            TEXT PRIMARY KEY,
    -- Lowercased: an address is unique whatever its case.
    email         TEXT NOT NULL UNIQUE,
    -- PHC string ($argon2id$v=19$...).
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('customer', 'admin')),
    created_at    TEXT NOT NULL
) STRICT, WITHOUT ROWID;
