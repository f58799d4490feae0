//! Group commit: a unit of work that arrives while every writer is busy joins the transaction
//! of one of them, inside a savepoint of its own, and a group commits once none of its members
//! is still writing. Under load a service then spends one commit (one WAL flush, one
//! notification to the relays) on several units of work; alone, a unit of work has a
//! transaction to itself, at the cost of a separate one.
//!
//! Each member stays its own unit of work: its inbox record, aggregate and outbox rows are
//! written together or not at all (a failure rolls back to its savepoint and is its own), and
//! it returns only once its group has committed. A member abandoned mid-write (its caller gave
//! up) breaks its group: the others are told to try again, and nothing of the group is kept.

use super::{Outbound, save_error, write_unit};
use crate::hand_off::HandOff;
use crate::unit_of_work::{Effects, SaveError};
use chrono::Utc;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Most units of work in one group: the first of them waits for the last to be written.
const MAX_MEMBERS: usize = 8;
/// Groups open for joining at once, each writing on a connection of its own, so that their
/// members' round trips overlap. Measured with `shop load` at 16 customers on 2 cores: one
/// writer and groups of 16 spent the least CPU per order, two writers and groups of 8 the same
/// throughput with the p99 of separate transactions.
const WRITERS: usize = 2;
/// Longest wait for a group's COMMIT; past it the outcome is unknown and reported as a
/// failure to try again (the inbox makes a repeat of a committed unit of work harmless).
const COMMIT_DEADLINE: Duration = Duration::from_secs(10);

/// Commits the units of work of one database, grouping those that overlap. Clones share the
/// groups: give every store of a database the same one.
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    writers: usize,
    /// The groups new units of work may join.
    open: Mutex<Vec<Arc<Group>>>,
    /// Where committed messages for this service's own consumers go straight away.
    hand_off: Option<Arc<HandOff>>,
}

impl From<PgPool> for GroupCommit {
    fn from(pool: PgPool) -> Self {
        Self::new(pool, WRITERS)
    }
}

impl GroupCommit {
    /// Group commit on `pool` with up to `writers` groups open at once (at least one).
    pub fn new(pool: PgPool, writers: usize) -> Self {
        let inner = Inner { pool, writers: writers.max(1), open: Mutex::new(Vec::new()), hand_off: None };
        Self { inner: Arc::new(inner) }
    }

    /// The same group commit (its clones do not share this) that hands the messages it commits
    /// for this service's own consumers to them through `hand_off`.
    pub fn with_hand_off(self, hand_off: Arc<HandOff>) -> Self {
        let inner = Inner {
            pool: self.inner.pool.clone(),
            writers: self.inner.writers,
            open: Mutex::new(Vec::new()),
            hand_off: Some(hand_off),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The pool the groups' transactions are taken from.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Commits one unit of work: records the consumed messages (refusing a second copy), lets
    /// `write_state` write the aggregate, writes the outgoing messages and withdraws cancelled
    /// scheduled ones; all of it or nothing, committed when this returns `Ok`.
    pub async fn commit(
        &self,
        effects: &Effects<'_>,
        write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError>,
    ) -> Result<(), SaveError> {
        let hand_off = self.inner.hand_off.as_deref();
        let handed = hand_off.map(|hand_off| hand_off.select(&effects.outgoing)).unwrap_or_default();
        let lease_until = Utc::now() + hand_off.map(HandOff::lease).unwrap_or_default();
        let outbound = Outbound { handed: &handed, lease_until };
        let group = self.join();
        let mut member = Membership { inner: &self.inner, group: &group, writing: false, done: false };
        let written = member.write(effects, &outbound, write_state).await;
        if member.finish(written.is_ok()) {
            // Spawned: a member that stops waiting must not abandon the others' commit.
            tokio::spawn(group.clone().commit());
        }
        written?;
        let mut outcome = group.committed.subscribe();
        let outcome = outcome.wait_for(Option::is_some).await.map_err(|_| abandoned())?;
        match outcome.as_ref() {
            Some(Ok(())) => {
                if let Some(hand_off) = hand_off {
                    let outgoing = effects.outgoing.iter().zip(&handed);
                    hand_off.deliver(outgoing.filter(|(_, handed)| **handed).map(|(outgoing, _)| &outgoing.envelope));
                }
                Ok(())
            }
            Some(Err(error)) => Err(SaveError::Unavailable(error.to_string().into())),
            None => unreachable!("waited for an outcome"),
        }
    }

    /// The group to join: a new one while fewer groups are open than there are writers (an
    /// open group always has a member writing); otherwise the open group with the fewest
    /// members writing.
    fn join(&self) -> Arc<Group> {
        let mut open = self.inner.open.lock().expect("group commit lock");
        open.retain(|group| group.members.lock().expect("group members lock").joined < MAX_MEMBERS);
        if open.len() >= self.inner.writers
            && let Some(group) =
                open.iter().min_by_key(|group| group.members.lock().expect("group members lock").writing)
        {
            let mut members = group.members.lock().expect("group members lock");
            members.joined += 1;
            members.writing += 1;
            drop(members);
            return group.clone();
        }
        let group = Arc::new(Group {
            tx: tokio::sync::Mutex::new(None),
            members: Mutex::new(Members { joined: 1, writing: 1, ..Members::default() }),
            committed: watch::Sender::new(None),
        });
        open.push(group.clone());
        group
    }
}

/// Units of work sharing one transaction.
struct Group {
    /// Opened by the first member to write; taken by the commit.
    tx: tokio::sync::Mutex<Option<Open>>,
    members: Mutex<Members>,
    /// The commit's outcome, once known.
    committed: watch::Sender<Option<Result<(), Arc<str>>>>,
}

/// A group's transaction.
struct Open {
    tx: Transaction<'static, Postgres>,
    /// Whether the savepoint `unit` exists: every member but the first writes in one.
    savepoint: bool,
}

#[derive(Default)]
struct Members {
    joined: usize,
    /// Joined and not done writing.
    writing: usize,
    /// Wrote their part and wait for the commit.
    kept: usize,
    /// The transaction can no longer be trusted: a member was abandoned in the middle of a
    /// statement, or a rollback to its savepoint failed.
    broken: bool,
}

fn abandoned() -> SaveError {
    SaveError::Unavailable("the group commit was abandoned".into())
}

/// One member's part in its group; dropped before it is done (its caller gave up), it leaves
/// the group without its part and breaks it if it stopped in the middle of writing.
struct Membership<'a> {
    inner: &'a Inner,
    group: &'a Arc<Group>,
    writing: bool,
    done: bool,
}

impl Membership<'_> {
    /// Writes the unit of work: the first of a transaction directly in it (a failure rolls the
    /// transaction back, and the next member begins another), the others each in a savepoint.
    async fn write(
        &mut self,
        effects: &Effects<'_>,
        outbound: &Outbound<'_>,
        write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError>,
    ) -> Result<(), SaveError> {
        let mut tx = self.group.tx.lock().await;
        if self.group.members.lock().expect("group members lock").broken {
            return Err(abandoned());
        }
        let first = tx.is_none();
        let connection: &mut PgConnection = match tx.as_mut() {
            Some(open) => {
                self.writing = true;
                // The previous member's savepoint (if any) becomes part of the group; this one
                // gets its own.
                let savepoint =
                    if open.savepoint { "RELEASE SAVEPOINT unit; SAVEPOINT unit" } else { "SAVEPOINT unit" };
                sqlx::raw_sql(savepoint).execute(&mut *open.tx).await.map_err(|error| {
                    self.break_group();
                    save_error(error)
                })?;
                open.savepoint = true;
                &mut open.tx
            }
            None => {
                let begun = self.inner.pool.begin().await.map_err(save_error)?;
                self.writing = true;
                &mut tx.insert(Open { tx: begun, savepoint: false }).tx
            }
        };
        let written = write_unit(connection, effects, outbound, write_state).await;
        if written.is_err() {
            if first {
                if let Some(open) = tx.take() {
                    let _ = open.tx.rollback().await; // dropped unfinished, it is rolled back anyway
                }
            } else if sqlx::raw_sql("ROLLBACK TO SAVEPOINT unit")
                .execute(&mut *tx.as_mut().expect("open").tx)
                .await
                .is_err()
            {
                self.break_group();
            }
        }
        self.writing = false;
        written
    }

    fn break_group(&self) {
        self.group.members.lock().expect("group members lock").broken = true;
    }

    /// Leaves the writers, keeping its part or not; whether this member must now commit the
    /// group (it was the last writer).
    fn finish(&mut self, kept: bool) -> bool {
        self.done = true;
        let mut open = self.inner.open.lock().expect("group commit lock");
        let mut members = self.group.members.lock().expect("group members lock");
        members.writing -= 1;
        members.kept += usize::from(kept);
        if members.writing > 0 {
            return false;
        }
        // Nobody writes any more: the group closes to newcomers and commits.
        open.retain(|group| !Arc::ptr_eq(group, self.group));
        true
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.writing {
            self.break_group();
        }
        if self.finish(false) {
            tokio::spawn(self.group.clone().commit());
        }
    }
}

impl Group {
    /// Commits what its members kept, or rolls it back if the transaction was broken.
    async fn commit(self: Arc<Self>) {
        let tx = self.tx.lock().await.take();
        let (kept, broken) = {
            let members = self.members.lock().expect("group members lock");
            (members.kept, members.broken)
        };
        let outcome = match tx {
            _ if broken => Err("another unit of work in its group commit was abandoned mid-write".into()),
            Some(open) if kept > 0 => {
                metrics::histogram!("group_commit_units").record(kept as f64);
                // Bounded: no caller's deadline reaches this task, and a commit on a connection
                // that went silent would otherwise hold it for good.
                match tokio::time::timeout(COMMIT_DEADLINE, open.tx.commit()).await {
                    Ok(committed) => committed.map_err(|error| Arc::from(crate::ErrorChain(&error).to_string())),
                    Err(_) => Err(format!("the commit did not answer within {COMMIT_DEADLINE:?}").into()),
                }
            }
            _ => Ok(()), // nothing kept: dropping the transaction rolls it back
        };
        self.committed.send_replace(Some(outcome));
    }
}
