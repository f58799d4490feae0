//! The SQLite stores of the embedded mode: the same ports and promises as the PostgreSQL ones,
//! over one file (`messaging::sqlite::Database`). Money is exact decimal text, ids are UUID text,
//! times are `messaging::sqlite::Timestamp`s; the database refuses an oversold product and a
//! second reservation of one product for one order, as PostgreSQL does.

mod products;
mod sagas;

pub use products::SqliteProductStore;
pub use sagas::SqliteSagaStore;
