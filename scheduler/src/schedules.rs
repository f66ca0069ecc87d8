//! The tick loop: every enabled schedule's next fire, kept in memory and
//! fired on time.
//!
//! Any number of replicas run this loop over the same schedules. A fire is
//! claimed by inserting `(schedule, fire_at)` into `schedule_runs`: the one
//! replica whose insert wins creates the task row (same transaction) and
//! pushes its job; the others count the tick as lost to a peer. A crash
//! after the commit and before the push is repaired by the reconciler, like
//! any row whose push never happened.
//!
//! Edits reach every replica at commit through Postgres `NOTIFY` (a trigger
//! on `schedules`), and everything is reloaded every minute and whenever
//! the listening connection was lost, so a missed notification costs at
//! most that.
//!
//! Missed ticks: after downtime (or a stall) a schedule fires **once** for
//! the whole missed period — for the latest tick that passed — and then
//! goes on from now: no burst of catch-up fires. Ticks before the schedule
//! was created, enabled or rescheduled are never fired.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use keel_shared::{
    Config, RedisClient,
    db::{
        schedules::{self, Schedule, SystemKind, SystemSchedule},
        tasks::{self, TaskState},
    },
    queue::{JobQueue, Maintenance, MaintenanceJob, dispatch},
    task_events,
    timetable::Timetable,
};
use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::reconciler;

/// The channel the `schedules` trigger notifies.
const CHANNEL: &str = "keel_schedules";
/// Everything is reloaded this often, whatever the notifications said.
const FULL_RELOAD: Duration = Duration::from_secs(60);
/// Reconcile and trim start this long after their tick.
const HOUSEKEEPING_DELAY: Duration = Duration::from_millis(100);
/// Fires of one instant (many schedules on `0 * * * *`) run this many at a time.
const PARALLEL_FIRES: usize = 8;

/// The built-in schedules. The reconcile period is `RECONCILE_SECONDS` (at
/// most 60), as a seconds step of the minute.
pub fn system_schedules(config: &Config) -> Vec<SystemSchedule> {
    let reconcile = match config.tasks.reconcile_seconds {
        60 => "0 * * * * *".to_owned(),
        n => format!("*/{n} * * * * *"),
    };
    vec![
        SystemSchedule {
            name: "system.reconcile",
            cron: reconcile,
            kind: SystemKind::Reconcile,
        },
        SystemSchedule {
            name: "system.purge_expired",
            cron: "0 0 * * * *".into(),
            kind: SystemKind::PurgeExpired,
        },
        SystemSchedule {
            name: "system.purge_finished",
            cron: "0 30 3 * * *".into(),
            kind: SystemKind::PurgeFinished,
        },
        // A quarter past, out of the way of the purge on the hour.
        SystemSchedule {
            name: "system.sweep_orphans",
            cron: "0 15 * * * *".into(),
            kind: SystemKind::SweepOrphans,
        },
        SystemSchedule {
            name: "system.trim_redis",
            cron: "*/10 * * * * *".into(),
            kind: SystemKind::TrimRedis,
        },
    ]
}

/// One loaded schedule and its next fire.
#[derive(Debug)]
struct Entry {
    schedule: Schedule,
    timetable: Timetable,
    /// The next fire; `None` when it never fires again.
    due: Option<DateTime<Utc>>,
    /// After a failed fire (Postgres or Redis down): not tried again before this.
    retry_at: Option<DateTime<Utc>>,
}

impl Entry {
    fn load(schedule: Schedule) -> Option<Self> {
        let timetable = match Timetable::parse(&schedule.cron, &schedule.timezone) {
            Ok(t) => t,
            Err(e) => {
                // The API validates; only a hand-edited row gets here.
                tracing::warn!(schedule = %schedule.id, error = %e, "schedule not loaded");
                return None;
            }
        };
        // The first tick after the last one claimed (or after the timetable
        // took effect); if that has passed, it fires at once — once.
        let since = schedule.last_tick_at.unwrap_or(schedule.fire_from);
        let due = timetable.next_after(since.max(schedule.fire_from));
        Some(Self {
            schedule,
            timetable,
            due,
            retry_at: None,
        })
    }

    /// When this entry next wants the loop: its fire, or its retry after a failure.
    fn wake_at(&self) -> Option<DateTime<Utc>> {
        self.due
            .map(|due| self.retry_at.map_or(due, |r| r.max(due)))
    }

    /// Whether `other` fires the same timetable from the same point, so
    /// this entry's next fire still holds (a claim elsewhere that moved
    /// `last_tick_at` past it is caught by the claim).
    fn same_timing(&self, other: &Schedule) -> bool {
        self.schedule.cron == other.cron
            && self.schedule.timezone == other.timezone
            && self.schedule.fire_from == other.fire_from
    }
}

/// How one tick went on this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fired,
    /// Not claimed: another replica fired it (or the schedule changed under it).
    Lost,
    /// Not claimed: the previous run of this work is still going here.
    Skipped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Fired => "fired",
            Self::Lost => "lost",
            Self::Skipped => "skipped",
        }
    }
}

/// Fires schedules on this replica.
#[derive(Debug, Clone)]
pub struct Ticker {
    db: PgPool,
    redis: RedisClient,
    jobs: JobQueue,
    /// This replica's name in `schedule_runs.fired_by`.
    replica: String,
    timeout_seconds: i32,
    reconcile: reconciler::Settings,
    /// How far the database's clock is ahead of this host's, in
    /// microseconds: ticks are due by the database clock, so a replica
    /// whose clock runs ahead or behind fires neither early nor late.
    clock_offset: Arc<AtomicI64>,
    /// A reconcile pass is running here; the next tick is left to others.
    reconciling: Arc<AtomicBool>,
    /// A Redis trim is running here.
    trimming: Arc<AtomicBool>,
}

impl Ticker {
    pub fn new(config: &Config, db: PgPool, redis: RedisClient, replica: String) -> Self {
        Self {
            jobs: JobQueue::new(redis.clone()),
            db,
            redis,
            replica,
            timeout_seconds: i32::try_from(config.tasks.default_timeout_seconds).unwrap_or(300),
            reconcile: reconciler::Settings::from_config(config),
            clock_offset: Arc::default(),
            reconciling: Arc::default(),
            trimming: Arc::default(),
        }
    }

    /// Runs the tick loop until `stop`. Postgres being down only delays
    /// ticks (each fires once it is back, under the missed-tick rule).
    pub async fn run(self, system: Vec<SystemSchedule>, stop: CancellationToken) {
        while let Err(e) = schedules::ensure_system(&self.db, &system).await {
            tracing::warn!(error = %e, "cannot create the built-in schedules; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let mut entries: HashMap<Uuid, Entry> = HashMap::new();
        let mut listener: Option<PgListener> = None;
        let mut reload = tokio::time::interval(FULL_RELOAD);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if listener.is_none() {
                listener = self.listen().await;
                // Whatever changed while nobody listened.
                self.reload_all(&mut entries).await;
                reload.reset();
            }
            let next = entries.values().filter_map(Entry::wake_at).min();
            let wait = next.map(|at| (at - self.now()).to_std().unwrap_or_default());
            tokio::select! {
                () = stop.cancelled() => return,
                () = sleep_or_forever(wait) => tokio::select! {
                    // A stop abandons fires in progress (their transactions roll back).
                    () = stop.cancelled() => return,
                    () = self.fire_due(&mut entries) => {}
                },
                changed = recv(listener.as_mut()) => match changed {
                    Ok(Some(id)) => self.reload_one(&mut entries, id).await,
                    // The connection dropped: listen again and reload.
                    Ok(None) | Err(()) => listener = None,
                },
                _ = reload.tick() => self.reload_all(&mut entries).await,
            }
            metrics::gauge!("keel_scheduler_schedules").set(entries.len() as f64);
        }
    }

    /// A listener on the schedules channel, or `None` (after a pause) when
    /// Postgres is unreachable: the loop then runs on periodic reloads.
    async fn listen(&self) -> Option<PgListener> {
        let listener = async {
            let mut listener = PgListener::connect_with(&self.db).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for schedule changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
        }
    }

    /// An entry for `schedule`, its next fire shown on the row.
    async fn load(&self, schedule: Schedule) -> Option<Entry> {
        let entry = Entry::load(schedule)?;
        if entry.schedule.next_run_at != entry.due
            && let Err(e) = schedules::show_next_run(&self.db, entry.schedule.id, entry.due).await
        {
            tracing::debug!(error = %e, "next run not shown");
        }
        Some(entry)
    }

    /// The database clock, as well as this replica knows it.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::microseconds(self.clock_offset.load(Ordering::Relaxed))
    }

    /// Measures the database clock against this host's, at start and on
    /// every full reload. The database read its clock somewhere within a
    /// round trip; taking the end of it as that moment errs late, never
    /// early, so no tick fires before its time by the database clock. The
    /// quickest of a few round trips errs least (a slow one may have waited
    /// for a pooled connection).
    async fn sync_clock(&self) {
        let mut best: Option<(chrono::Duration, chrono::Duration)> = None;
        for _ in 0..3 {
            let before = Utc::now();
            let Ok(db_now) = sqlx::query_scalar::<_, DateTime<Utc>>("SELECT clock_timestamp()")
                .fetch_one(&self.db)
                .await
            else {
                return; // Postgres is down: keep the last offset.
            };
            let after = Utc::now();
            let sample = (after - before, db_now - after);
            if best.is_none_or(|(trip, _)| sample.0 < trip) {
                best = Some(sample);
            }
        }
        let Some((_, offset)) = best else { return };
        let micros = offset.num_microseconds().unwrap_or(0);
        let previous = self.clock_offset.swap(micros, Ordering::Relaxed);
        if micros.abs() >= 1_000_000 && (micros - previous).abs() >= 500_000 {
            tracing::warn!(
                offset_ms = micros / 1000,
                "this host's clock is off the database's; ticks follow the database"
            );
        }
    }

    async fn reload_all(&self, entries: &mut HashMap<Uuid, Entry>) {
        self.sync_clock().await;
        let loaded = match schedules::enabled(&self.db).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load schedules; keeping the ones loaded");
                return;
            }
        };
        let mut fresh = HashMap::with_capacity(loaded.len());
        for schedule in loaded {
            let id = schedule.id;
            match entries.remove(&id) {
                Some(mut kept) if kept.same_timing(&schedule) => {
                    kept.schedule = schedule;
                    fresh.insert(id, kept);
                }
                _ => {
                    if let Some(entry) = self.load(schedule).await {
                        fresh.insert(id, entry);
                    }
                }
            }
        }
        *entries = fresh;
    }

    async fn reload_one(&self, entries: &mut HashMap<Uuid, Entry>, id: Uuid) {
        match schedules::get(&self.db, id).await {
            Ok(Some(schedule)) if schedule.enabled => match entries.get_mut(&id) {
                Some(kept) if kept.same_timing(&schedule) => kept.schedule = schedule,
                _ => {
                    entries.remove(&id);
                    if let Some(entry) = self.load(schedule).await {
                        entries.insert(id, entry);
                    }
                }
            },
            Ok(_) => {
                entries.remove(&id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload a schedule; the next full reload will")
            }
        }
    }

    /// Fires every entry that is due, and moves each to its next fire.
    async fn fire_due(&self, entries: &mut HashMap<Uuid, Entry>) {
        let now = self.now();
        let due: Vec<&mut Entry> = entries
            .values_mut()
            .filter(|e| e.wake_at().is_some_and(|at| at <= now))
            .collect();
        futures_util::stream::iter(due)
            .for_each_concurrent(PARALLEL_FIRES, |entry| async move {
                let Some(due) = entry.due else { return };
                // On time, the tick is `due`; after a stall or downtime it is
                // the latest tick that passed, fired once for all of them.
                let fire_at = match entry.timetable.next_after(due) {
                    Some(after) if after > now => due,
                    _ => entry.timetable.last_at_or_before(now).unwrap_or(due),
                };
                if fire_at > due {
                    metrics::counter!("keel_scheduler_ticks_missed_total").increment(1);
                }
                let next = entry.timetable.next_after(fire_at);
                let outcome = self.fire(&entry.schedule, fire_at, next).await;
                match outcome {
                    Ok(outcome) => {
                        metrics::counter!("keel_scheduler_ticks_total", "outcome" => outcome.label())
                            .increment(1);
                        entry.due = next;
                        entry.retry_at = None;
                    }
                    Err(e) => {
                        // Postgres or Redis failed: try again shortly; if the
                        // outage outlasts the next tick, the missed-tick rule
                        // fires once for all.
                        tracing::warn!(schedule = %entry.schedule.name, %fire_at, error = %e, "tick not fired; retrying");
                        entry.retry_at = Some(self.now() + chrono::Duration::seconds(1));
                    }
                }
            })
            .await;
    }

    /// Claims and fires the tick `fire_at` of `schedule`.
    async fn fire(
        &self,
        schedule: &Schedule,
        fire_at: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Outcome> {
        if !schedule.system {
            return self.fire_task(schedule, fire_at, next).await;
        }
        // Reconcile and trim run here, in the scheduler: they repair the
        // transport itself, so they must not depend on it. Purges are the
        // worker's, on the `maintenance` queue.
        let kind = SystemKind::parse(&schedule.kind);
        let here = match kind {
            Some(SystemKind::Reconcile) => Some(&self.reconciling),
            Some(SystemKind::TrimRedis) => Some(&self.trimming),
            _ => None,
        };
        if here.is_some_and(|busy| busy.load(Ordering::Acquire)) {
            return Ok(Outcome::Skipped);
        }
        if schedules::claim_tick(&self.db, schedule, fire_at, &self.replica)
            .await?
            .is_none()
        {
            return Ok(Outcome::Lost);
        }
        self.observe_lateness(fire_at);
        let work = match kind {
            Some(kind @ (SystemKind::Reconcile | SystemKind::TrimRedis)) => {
                schedules::record_fire(&self.db, schedule.id, fire_at, None, "running", next)
                    .await?;
                self.spawn_here(schedule, kind);
                return Ok(Outcome::Fired);
            }
            Some(SystemKind::PurgeExpired) => Maintenance::PurgeExpired,
            Some(SystemKind::PurgeFinished) => Maintenance::PurgeFinished,
            Some(SystemKind::SweepOrphans) => Maintenance::SweepOrphans,
            None => anyhow::bail!("unknown system schedule kind {:?}", schedule.kind),
        };
        let job = MaintenanceJob {
            work,
            schedule_id: Some(schedule.id),
        };
        // A lost maintenance job is harmless (the next tick asks again), so
        // a failed push is recorded, not retried.
        let status = match self.jobs.push(job, None).await {
            Ok(()) => "queued",
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "maintenance not queued");
                "failed"
            }
        };
        schedules::record_fire(&self.db, schedule.id, fire_at, None, status, next).await?;
        Ok(Outcome::Fired)
    }

    /// A user schedule's tick: claim, task row and record in one
    /// transaction, then the push.
    async fn fire_task(
        &self,
        schedule: &Schedule,
        fire_at: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Outcome> {
        let mut tx = self.db.begin().await?;
        // The task is made from the row as the claim found it, never from
        // this replica's copy, which may lag an edit by a moment.
        let Some(claimed) =
            schedules::claim_tick(&mut *tx, schedule, fire_at, &self.replica).await?
        else {
            return Ok(Outcome::Lost);
        };
        let spec = claimed.task(fire_at, self.timeout_seconds);
        let Some(owner) = claimed.owner_id else {
            anyhow::bail!("user schedule {} has no owner", schedule.id);
        };
        let created = tasks::insert_many(&mut *tx, owner, "scheduler", &[spec]).await?;
        let task_id = created.first().map(|t| t.id);
        schedules::record_fire(&mut *tx, schedule.id, fire_at, task_id, "pending", next).await?;
        tx.commit().await?;
        self.observe_lateness(fire_at);
        // A failed push leaves the row for the reconciler: not this tick's failure.
        let _ = dispatch::push_tasks(&self.db, &self.jobs, &created).await;
        let states: Vec<TaskState> = created.iter().map(TaskState::from).collect();
        task_events::publish(&self.redis, &states).await;
        Ok(Outcome::Fired)
    }

    fn observe_lateness(&self, fire_at: DateTime<Utc>) {
        let late = (self.now() - fire_at).to_std().unwrap_or_default();
        metrics::histogram!("keel_scheduler_tick_lateness_seconds").record(late.as_secs_f64());
    }

    /// Runs a reconcile pass or a Redis trim beside the loop, so a long
    /// one (after a Redis wipe) delays no tick; its outcome becomes the
    /// schedule's `last_status`.
    fn spawn_here(&self, schedule: &Schedule, kind: SystemKind) {
        let id = schedule.id;
        let busy = if kind == SystemKind::Reconcile {
            self.reconciling.clone()
        } else {
            self.trimming.clone()
        };
        busy.store(true, Ordering::Release);
        let this = self.clone();
        tokio::spawn(async move {
            // Let the user ticks of the same second commit first: they are
            // the ones whose lateness users see.
            tokio::time::sleep(HOUSEKEEPING_DELAY).await;
            let status = if kind == SystemKind::Reconcile {
                match reconciler::pass(&this.db, &this.redis, &this.jobs, this.reconcile).await {
                    Ok(Some(repairs)) => {
                        if repairs != reconciler::Repairs::default() {
                            tracing::info!(?repairs, "reconciled");
                        }
                        "completed"
                    }
                    // Another replica's pass still holds the lock.
                    Ok(None) => "skipped",
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile pass failed; trying again next time");
                        "failed"
                    }
                }
            } else {
                match this.jobs.trim_all_done().await {
                    Ok(trimmed) => {
                        metrics::counter!("keel_reconciler_repairs_total", "what" => "job_trimmed")
                            .increment(trimmed);
                        "completed"
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis trim failed; trying again next time");
                        "failed"
                    }
                }
            };
            if let Err(e) = schedules::set_last_status(&this.db, id, status).await {
                tracing::debug!(error = %e, "status not recorded");
            }
            busy.store(false, Ordering::Release);
        });
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// The next changed schedule id: `Ok(None)` when the connection was lost
/// (sqlx reconnects on the next receive, but what was sent meanwhile is
/// gone), `Err` on failure; never returns without a listener.
async fn recv(listener: Option<&mut PgListener>) -> Result<Option<Uuid>, ()> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => match n.payload().parse() {
                Ok(id) => return Ok(Some(id)),
                Err(_) => continue,
            },
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "lost the schedule change listener");
                return Err(());
            }
        }
    }
}
