//! Group commit: a unit of work that arrives while every writer is busy joins the transaction
//! of one of them, and a group commits once none of its members is still writing. Under load a
//! service then spends one commit (one WAL flush) on several units of work. A unit of work that
//! finds nobody else writing, and is one statement ([`StateWrites`]), is written alone: that
//! statement commits itself, without the round trips of BEGIN and COMMIT.
//!
//! Each member stays its own unit of work: its inbox record, aggregate and outbox rows are
//! written together or not at all, and it returns only once its group has committed. A member
//! that fails (or is abandoned mid-write: its caller gave up) breaks its group: nothing of the
//! group is kept, and the other members write again at once in another group, without
//! troubling their callers. Failures are rare (a concurrent change, a second copy of a
//! message), so that costs less than a savepoint per member, which was a round trip per unit of
//! work.

use super::{Outbound, StateWrites, save_error, write_in_one, write_unit};
use crate::hand_off::HandOff;
use crate::unit_of_work::{Effects, SaveError};
use chrono::Utc;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Most units of work in one group: the first of them waits for the last to be written.
const MAX_MEMBERS: usize = 16;
/// Groups open for joining at once, each writing on a connection of its own, so that their
/// members' round trips overlap. Measured with `bench/ab.py` at 16 customers on 2 cores, units
/// of work that find nobody writing going alone: one writer and groups of 16 spent 8 % less CPU
/// per order than two writers and groups of 8, for 2 % more orders/s; groups of 32, 10 % fewer.
const WRITERS: usize = 1;
/// Longest wait for a group's COMMIT; past it the outcome is unknown and reported as a
/// failure to try again (the inbox makes a repeat of a committed unit of work harmless).
const COMMIT_DEADLINE: Duration = Duration::from_secs(10);
/// Most groups a unit of work writes in when other members break them; past that its caller
/// is told to try again later.
const MAX_GROUPS: usize = 4;

/// Commits the units of work of one database, grouping those that overlap. Clones share the
/// groups: give every store of a database the same one.
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    writers: usize,
    /// Who is writing.
    open: Mutex<Open>,
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
        let inner = Inner { pool, writers: writers.max(1), open: Mutex::default(), hand_off: None };
        Self { inner: Arc::new(inner) }
    }

    /// The same group commit (its clones do not share this) that hands the messages it commits
    /// on through `hand_off`, to their consumers in this process or to its relay.
    pub fn with_hand_off(self, hand_off: Arc<HandOff>) -> Self {
        let inner = Inner {
            pool: self.inner.pool.clone(),
            writers: self.inner.writers,
            open: Mutex::default(),
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
    /// scheduled ones; all of it or nothing, committed when this returns `Ok`. A copy of
    /// `write_state` runs again if another member breaks the group it wrote in.
    pub async fn commit(
        &self,
        effects: &Effects<'_>,
        write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError> + Clone,
    ) -> Result<(), SaveError> {
        self.commit_unit(effects, None, write_state).await
    }

    /// Commits one unit of work as [`commit`](Self::commit) does, with the aggregate's `writes`
    /// in the statement that writes the effects: one round trip for the whole unit.
    pub async fn commit_writes(&self, effects: &Effects<'_>, writes: &StateWrites) -> Result<(), SaveError> {
        self.commit_unit(effects, Some(writes), async |_| Ok(())).await
    }

    /// Commits the unit of work: its effects and `writes` in one statement, or without `writes`
    /// its effects in one and the aggregate through `write_state`.
    async fn commit_unit(
        &self,
        effects: &Effects<'_>,
        writes: Option<&StateWrites>,
        write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError> + Clone,
    ) -> Result<(), SaveError> {
        let hand_off = self.inner.hand_off.as_ref();
        let handed = hand_off.map(|hand_off| hand_off.select(&effects.outgoing)).unwrap_or_default();
        let lease_until = Utc::now() + hand_off.map(|hand_off| hand_off.lease()).unwrap_or_default();
        let outbound = Outbound { handed: &handed, lease_until };
        if let Some(writes) = writes
            && let Some(_alone) = self.alone()
        {
            let mut connection = self.inner.pool.acquire().await.map_err(save_error)?;
            write_in_one(&mut connection, effects, &outbound, writes).await?;
            if let Some(hand_off) = hand_off {
                hand_off.deliver(handed_off(effects, &handed));
            }
            return Ok(());
        }
        for _ in 0..MAX_GROUPS {
            let group = self.join();
            let mut member = Membership { inner: &self.inner, group: &group, writing: false, done: false };
            let written = member.write(effects, &outbound, writes, write_state.clone()).await;
            if member.finish(matches!(written, Some(Ok(())))) {
                // Spawned: a member that stops waiting must not abandon the others' commit.
                tokio::spawn(group.clone().commit());
            }
            match written {
                None => continue, // broken before it could write
                Some(written) => written?,
            }
            let mut outcome = group.committed.subscribe();
            let outcome = outcome.wait_for(Option::is_some).await.map_err(|_| abandoned())?.clone();
            match outcome.expect("waited for an outcome") {
                Outcome::Committed => {
                    if let Some(hand_off) = hand_off {
                        hand_off.deliver(handed_off(effects, &handed));
                    }
                    return Ok(());
                }
                Outcome::Broken => continue,
                Outcome::Failed(error) => return Err(SaveError::Unavailable(error.to_string().into())),
            }
        }
        Err(abandoned())
    }

    /// A turn to write alone, if no other unit of work is writing: one statement on a
    /// connection of its own, committed by itself (no BEGIN and COMMIT round trips). Under load
    /// units of work still share groups, which spend one commit on several.
    fn alone(&self) -> Option<Alone<'_>> {
        let mut open = self.inner.open.lock().expect("group commit lock");
        open.groups.retain(Group::joinable);
        if !open.groups.is_empty() || open.alone > 0 {
            return None;
        }
        open.alone += 1;
        Some(Alone { inner: &self.inner })
    }

    /// The group to join: a new one while fewer groups are open than there are writers (an
    /// open group always has a member writing); otherwise the open group with the fewest
    /// members writing.
    fn join(&self) -> Arc<Group> {
        let mut open = self.inner.open.lock().expect("group commit lock");
        open.groups.retain(Group::joinable);
        if open.groups.len() >= self.inner.writers
            && let Some(group) =
                open.groups.iter().min_by_key(|group| group.members.lock().expect("group members lock").writing)
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
        open.groups.push(group.clone());
        group
    }
}

/// The messages of `effects` that are handed off (`handed`, per outgoing message).
fn handed_off<'a>(effects: &'a Effects<'_>, handed: &'a [bool]) -> impl Iterator<Item = &'a crate::Envelope> {
    effects.outgoing.iter().zip(handed).filter(|(_, handed)| **handed).map(|(outgoing, _)| &outgoing.envelope)
}

/// A unit of work writing alone ([`GroupCommit::alone`]), until dropped.
struct Alone<'a> {
    inner: &'a Inner,
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.inner.open.lock().expect("group commit lock").alone -= 1;
    }
}

/// Who is writing besides the groups that are committing.
#[derive(Default)]
struct Open {
    /// The groups new units of work may join.
    groups: Vec<Arc<Group>>,
    /// Units of work writing alone.
    alone: usize,
}

/// Units of work sharing one transaction.
struct Group {
    /// Opened by the first member to write; taken by the commit.
    tx: tokio::sync::Mutex<Option<Transaction<'static, Postgres>>>,
    members: Mutex<Members>,
    /// The commit's outcome, once known.
    committed: watch::Sender<Option<Outcome>>,
}

/// What became of a group's transaction.
#[derive(Clone)]
enum Outcome {
    Committed,
    /// A member failed or was abandoned: nothing was kept, and the others write again.
    Broken,
    /// The commit failed, or its outcome is unknown.
    Failed(Arc<str>),
}

#[derive(Default)]
struct Members {
    joined: usize,
    /// Joined and not done writing.
    writing: usize,
    /// Wrote their part and wait for the commit.
    kept: usize,
    /// Nothing of the transaction may be kept: a member failed, or was abandoned in the middle
    /// of writing.
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
    /// Writes the unit of work in the group's transaction (beginning it, for the first
    /// member); a failure breaks the group. `None`: the group was broken before it could write.
    async fn write(
        &mut self,
        effects: &Effects<'_>,
        outbound: &Outbound<'_>,
        writes: Option<&StateWrites>,
        write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError>,
    ) -> Option<Result<(), SaveError>> {
        let mut tx = self.group.tx.lock().await;
        if self.group.members.lock().expect("group members lock").broken {
            return None;
        }
        let connection = match tx.as_mut() {
            Some(open) => open,
            None => match self.inner.pool.begin().await {
                Ok(begun) => tx.insert(begun),
                Err(error) => {
                    self.break_group();
                    return Some(Err(save_error(error)));
                }
            },
        };
        self.writing = true;
        let written = match writes {
            Some(writes) => write_in_one(connection, effects, outbound, writes).await,
            None => write_unit(connection, effects, outbound, write_state).await,
        };
        if written.is_err() {
            self.break_group();
        }
        self.writing = false;
        Some(written)
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
        open.groups.retain(|group| !Arc::ptr_eq(group, self.group));
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
    /// Whether a unit of work may still join it.
    fn joinable(self: &Arc<Self>) -> bool {
        let members = self.members.lock().expect("group members lock");
        members.joined < MAX_MEMBERS && !members.broken
    }

    /// Commits what its members kept, or rolls it back if the transaction was broken.
    async fn commit(self: Arc<Self>) {
        let tx = self.tx.lock().await.take();
        let (kept, broken) = {
            let members = self.members.lock().expect("group members lock");
            (members.kept, members.broken)
        };
        let outcome = match tx {
            // Dropped, the transaction is rolled back.
            _ if broken => Outcome::Broken,
            Some(tx) if kept > 0 => {
                metrics::histogram!("group_commit_units").record(kept as f64);
                // Bounded: no caller's deadline reaches this task, and a commit on a connection
                // that went silent would otherwise hold it for good.
                match tokio::time::timeout(COMMIT_DEADLINE, tx.commit()).await {
                    Ok(Ok(())) => Outcome::Committed,
                    Ok(Err(error)) => Outcome::Failed(crate::ErrorChain(&error).to_string().into()),
                    Err(_) => Outcome::Failed(format!("the commit did not answer within {COMMIT_DEADLINE:?}").into()),
                }
            }
            _ => Outcome::Committed, // nothing kept, nothing to commit
        };
        self.committed.send_replace(Some(outcome));
    }
}
