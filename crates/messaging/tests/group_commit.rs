//! Group commit on PostgreSQL: units of work that overlap share a transaction, yet each is
//! still all-or-nothing on its own: one that fails or is abandoned mid-write breaks its group,
//! whose other members are written again in another, unknown to their callers.

mod common;

use futures::future::join_all;
use messaging::postgres::{GroupCommit, save_error};
use messaging::testing::TestDatabase;
use messaging::{Effects, SaveError};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

async fn database() -> TestDatabase {
    let db = common::database().await;
    sqlx::query("CREATE TABLE writes (unit int PRIMARY KEY, tx bigint NOT NULL)").execute(&db.pool).await.unwrap();
    db
}

/// One unit of work: consumes a message, sends one, and records the transaction it ran in,
/// after `pause` (which holds its group open) and then `fails` or not.
async fn unit(db: &GroupCommit, unit: i32, pause: Duration, fails: bool) -> Result<(), SaveError> {
    let consumed = Uuid::now_v7();
    let mut effects = Effects::consuming("test", consumed);
    effects.send(common::shipped(Uuid::now_v7()));
    db.commit(&effects, async |tx| {
        sqlx::query("SELECT pg_sleep($1)").bind(pause.as_secs_f64()).execute(&mut *tx).await.map_err(save_error)?;
        sqlx::query("INSERT INTO writes VALUES ($1, txid_current())")
            .bind(unit)
            .execute(&mut *tx)
            .await
            .map_err(save_error)?;
        if fails { Err(SaveError::Conflict) } else { Ok(()) }
    })
    .await
}

async fn count(db: &TestDatabase, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn units_that_overlap_share_commits_and_a_failing_one_leaves_nothing_of_itself() {
    let db = database().await;
    let group = GroupCommit::from(db.pool.clone());
    // The first unit holds its group open long enough for the others to join it.
    let outcomes = join_all((0..12).map(|n| {
        let pause = if n == 0 { Duration::from_millis(200) } else { Duration::ZERO };
        unit(&group, n, pause, n == 5)
    }))
    .await;

    for (n, outcome) in outcomes.iter().enumerate() {
        match n {
            5 => assert!(matches!(outcome, Err(SaveError::Conflict)), "unit 5: {outcome:?}"),
            _ => assert!(outcome.is_ok(), "unit {n}: {outcome:?}"),
        }
    }
    let written: Vec<(i32, i64)> = sqlx::query_as("SELECT unit, tx FROM writes").fetch_all(&db.pool).await.unwrap();
    let units: HashSet<i32> = written.iter().map(|(unit, _)| *unit).collect();
    assert_eq!(units, (0..12).filter(|&n| n != 5).collect());
    let transactions: HashSet<i64> = written.iter().map(|(_, tx)| *tx).collect();
    assert!(transactions.len() < 4, "11 overlapping units took {} transactions", transactions.len());
    // The failed unit's inbox record and message went with it.
    assert_eq!(count(&db, "inbox").await, 11);
    assert_eq!(count(&db, "outbox").await, 11);
}

#[tokio::test]
async fn a_unit_abandoned_mid_write_leaves_nothing_and_the_unit_that_shared_its_group_is_written_again() {
    let db = database().await;
    // One writer: the second unit of work joins the first's group rather than opening its own.
    let group = GroupCommit::new(db.pool.clone(), 1);
    let abandoned = tokio::time::timeout(Duration::from_millis(100), unit(&group, 0, Duration::from_secs(5), false));
    let joined = async {
        // Joins while unit 0 is still writing (the sleep holds the group's connection).
        tokio::time::sleep(Duration::from_millis(20)).await;
        unit(&group, 1, Duration::ZERO, false).await
    };
    let (abandoned, joined) = tokio::join!(abandoned, joined);
    assert!(abandoned.is_err(), "unit 0 should have been cut off");
    assert!(joined.is_ok(), "unit 1: {joined:?}");
    let written: Vec<i32> = sqlx::query_scalar("SELECT unit FROM writes").fetch_all(&db.pool).await.unwrap();
    assert_eq!(written, [1], "nothing of unit 0, unit 1 once");
    assert_eq!(count(&db, "inbox").await, 1);
    assert_eq!(count(&db, "outbox").await, 1);

    unit(&group, 2, Duration::ZERO, false).await.unwrap();
    assert_eq!(count(&db, "writes").await, 2);
    assert_eq!(count(&db, "outbox").await, 2);
}

#[tokio::test]
async fn a_second_copy_of_a_consumed_message_is_refused_within_one_group_too() {
    let db = database().await;
    let group = GroupCommit::from(db.pool.clone());
    let message = Uuid::now_v7();
    let effects = Effects::consuming("test", message);
    let twice = join_all((0..2).map(|_| {
        group.commit(&effects, async |tx| {
            sqlx::query("SELECT pg_sleep(0.1)").execute(&mut *tx).await.map_err(save_error)?;
            Ok(())
        })
    }))
    .await;
    let refused = twice.iter().filter(|outcome| matches!(outcome, Err(SaveError::AlreadyConsumed))).count();
    assert_eq!((twice.iter().filter(|outcome| outcome.is_ok()).count(), refused), (1, 1), "{twice:?}");
    assert_eq!(count(&db, "inbox").await, 1);
}
