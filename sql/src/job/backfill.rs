//! A backfill's orchestration as a pure state machine: which chunk runs
//! next and what to do on each event. The runner (the leader scheduler's
//! `sluice_scheduler::backfill`, or `sluice backfill --local`) performs the
//! [`Action`]s and feeds back the [`Event`]s; nothing here does I/O, so each
//! event in each state is unit-tested without a cluster.
//!
//! ```text
//!  chunk: Pending ─Submit─► Writing ─Staged─► Checking ─Checked(pass)─► Committing ─Committed─► Committed
//!                              │                 │ Checked(fail) ─► FailedQuality
//!                              └─JobFailed───────┴── retryable, attempts left ─► Writing (resubmitted)
//!                                                    otherwise ─► Failed
//!  backfill: Running ─all committed─► Done
//!                    ─a chunk Failed / FailedQuality, none in flight─► Failed / FailedQuality
//!                    ─Cancel─► Cancelled (jobs in flight stopped, staging discarded)
//!  Resume (start, or a new leader): chunks in flight go back to Pending and are resubmitted.
//! ```

use chrono::NaiveDate;

/// A backfill's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackfillState {
    Running,
    Done,
    Failed,
    FailedQuality,
    Cancelled,
}

impl BackfillState {
    pub fn is_final(self) -> bool {
        self != BackfillState::Running
    }

    pub fn name(self) -> &'static str {
        match self {
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Failed => "failed",
            BackfillState::FailedQuality => "failed-quality",
            BackfillState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for BackfillState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A chunk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkState {
    Pending,
    /// Its write job runs.
    Writing,
    /// Its quality checks run over the staged files.
    Checking,
    /// Its dates are being moved into the output.
    Committing,
    Committed,
    Failed,
    FailedQuality,
    Cancelled,
}

impl ChunkState {
    /// Whether work of the chunk is under way (a job, staged files).
    pub fn in_flight(self) -> bool {
        matches!(self, ChunkState::Writing | ChunkState::Checking | ChunkState::Committing)
    }

    pub const ALL: [ChunkState; 8] = [
        ChunkState::Pending,
        ChunkState::Writing,
        ChunkState::Checking,
        ChunkState::Committing,
        ChunkState::Committed,
        ChunkState::Failed,
        ChunkState::FailedQuality,
        ChunkState::Cancelled,
    ];
}

/// Who can fix a failure and whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: sluice_proto::ErrorClass,
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    pub fn new(
        class: sluice_proto::ErrorClass,
        retryable: bool,
        message: impl Into<String>,
    ) -> Self {
        Self { class, retryable, message: message.into() }
    }

    /// A DataFusion error raised while planning or running a chunk.
    pub fn of_datafusion(e: &datafusion::error::DataFusionError) -> Self {
        let (class, retryable) = crate::remote_error::classify(e);
        Self { class, retryable, message: crate::session::clean_df_message(e) }
    }
}

/// One chunk: consecutive feature dates computed by one write job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub first: NaiveDate,
    pub last: NaiveDate,
    pub state: ChunkState,
    /// Times its write job was submitted.
    pub submissions: u32,
    pub failure: Option<Failure>,
}

impl Chunk {
    pub fn new(first: NaiveDate, last: NaiveDate) -> Self {
        Self { first, last, state: ChunkState::Pending, submissions: 0, failure: None }
    }

    /// `FIRST_LAST`, as staging folders and messages name the chunk.
    pub fn label(&self) -> String {
        format!("{}_{}", self.first, self.last)
    }

    pub fn dates(&self) -> Vec<NaiveDate> {
        self.first.iter_days().take_while(|d| *d <= self.last).collect()
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The runner starts: first run, or a new leader taking over. Chunks
    /// that were in flight are resubmitted.
    Resume,
    /// The chunk's write job finished: its files are staged.
    Staged(usize),
    /// The chunk's quality checks ran.
    Checked { chunk: usize, passed: bool },
    /// The chunk's dates are in the output.
    Committed(usize),
    /// A job of the chunk (or reading its results, or committing) failed.
    JobFailed { chunk: usize, failure: Failure },
    /// Stop: cancel what runs, keep what is committed.
    Cancel,
}

/// What the runner must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the chunk's write job into a fresh staging folder.
    Submit { chunk: usize, attempt: u32 },
    /// Run its quality checks over the staged files.
    Check(usize),
    /// Move its staged dates into the output.
    Commit(usize),
    /// Cancel its jobs still running.
    StopJobs(usize),
    /// Remove its staging.
    Discard(usize),
    /// The chunk failed and is resubmitted (reported, then `Submit` follows).
    Retried { chunk: usize, failure: Failure },
    /// The backfill ended in this state.
    Finish(BackfillState),
}

/// An event that does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the backfill is {0}, not running")]
    NotRunning(BackfillState),
    #[error("no chunk {0}")]
    UnknownChunk(usize),
    #[error("chunk {label} is {state:?}; {event} does not apply")]
    Unexpected { label: String, state: ChunkState, event: &'static str },
}

/// The orchestration of one backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub chunks: Vec<Chunk>,
    pub state: BackfillState,
    /// Chunks in flight at once.
    pub parallel: usize,
    /// Submissions of a chunk beyond the first allowed for retryable failures.
    pub max_retries: u32,
    /// The state to end in once nothing is in flight (a chunk failed).
    stopping: Option<BackfillState>,
}

impl Machine {
    pub fn new(chunks: Vec<Chunk>, parallel: usize, max_retries: u32) -> Self {
        let mut m = Self {
            chunks,
            state: BackfillState::Running,
            parallel: parallel.max(1),
            max_retries,
            stopping: None,
        };
        m.stopping = m.failed_state();
        m
    }

    /// A machine resumed from a record (its chunks' states as saved).
    pub fn restore(
        chunks: Vec<Chunk>,
        state: BackfillState,
        parallel: usize,
        max_retries: u32,
    ) -> Self {
        let mut m = Self::new(chunks, parallel, max_retries);
        m.state = state;
        m
    }

    /// The end state a failed chunk forces, if any.
    fn failed_state(&self) -> Option<BackfillState> {
        if self.chunks.iter().any(|c| c.state == ChunkState::Failed) {
            Some(BackfillState::Failed)
        } else if self.chunks.iter().any(|c| c.state == ChunkState::FailedQuality) {
            Some(BackfillState::FailedQuality)
        } else {
            None
        }
    }

    pub fn in_flight(&self) -> usize {
        self.chunks.iter().filter(|c| c.state.in_flight()).count()
    }

    /// Applies `event`; returns what to do.
    ///
    /// # Errors
    /// [`Rejected`] when the event does not apply to the backfill's or the
    /// chunk's state (nothing changes).
    pub fn on(&mut self, event: Event) -> Result<Vec<Action>, Rejected> {
        if self.state.is_final() {
            return Err(Rejected::NotRunning(self.state));
        }
        let mut actions = Vec::new();
        match event {
            Event::Resume => {
                for (i, c) in self.chunks.iter_mut().enumerate() {
                    if c.state.in_flight() {
                        actions.push(Action::Discard(i));
                        c.state = ChunkState::Pending;
                    }
                }
            }
            Event::Staged(i) => {
                let c = self.chunk(i, ChunkState::Writing, "Staged")?;
                c.state = ChunkState::Checking;
                actions.push(Action::Check(i));
            }
            Event::Checked { chunk: i, passed } => {
                let c = self.chunk(i, ChunkState::Checking, "Checked")?;
                if passed {
                    c.state = ChunkState::Committing;
                    actions.push(Action::Commit(i));
                } else {
                    c.state = ChunkState::FailedQuality;
                    actions.push(Action::Discard(i));
                    if self.stopping.is_none() {
                        self.stopping = Some(BackfillState::FailedQuality);
                    }
                }
            }
            Event::Committed(i) => {
                let c = self.chunk(i, ChunkState::Committing, "Committed")?;
                c.state = ChunkState::Committed;
                c.failure = None;
                actions.push(Action::Discard(i));
            }
            Event::JobFailed { chunk: i, failure } => {
                let max_retries = self.max_retries;
                let c = self.chunks.get_mut(i).ok_or(Rejected::UnknownChunk(i))?;
                if !c.state.in_flight() {
                    return Err(Rejected::Unexpected {
                        label: c.label(),
                        state: c.state,
                        event: "JobFailed",
                    });
                }
                actions.push(Action::StopJobs(i));
                actions.push(Action::Discard(i));
                let stopping = self.stopping.is_some();
                if failure.retryable && c.submissions <= max_retries && !stopping {
                    c.submissions += 1;
                    c.state = ChunkState::Writing;
                    actions.push(Action::Retried { chunk: i, failure: failure.clone() });
                    c.failure = Some(failure);
                    actions.push(Action::Submit { chunk: i, attempt: c.submissions });
                } else {
                    c.state = ChunkState::Failed;
                    c.failure = Some(failure);
                    self.stopping = Some(BackfillState::Failed);
                }
            }
            Event::Cancel => {
                for (i, c) in self.chunks.iter_mut().enumerate() {
                    if c.state.in_flight() {
                        actions.push(Action::StopJobs(i));
                        actions.push(Action::Discard(i));
                        c.state = ChunkState::Cancelled;
                    }
                }
                self.state = BackfillState::Cancelled;
                actions.push(Action::Finish(BackfillState::Cancelled));
                return Ok(actions);
            }
        }
        self.fill(&mut actions);
        Ok(actions)
    }

    fn chunk(
        &mut self,
        i: usize,
        expected: ChunkState,
        event: &'static str,
    ) -> Result<&mut Chunk, Rejected> {
        let c = self.chunks.get_mut(i).ok_or(Rejected::UnknownChunk(i))?;
        if c.state != expected {
            return Err(Rejected::Unexpected { label: c.label(), state: c.state, event });
        }
        Ok(c)
    }

    /// Submits pending chunks into free slots, or ends the backfill.
    fn fill(&mut self, actions: &mut Vec<Action>) {
        if self.stopping.is_none() {
            let mut free = self.parallel.saturating_sub(self.in_flight());
            for (i, c) in self.chunks.iter_mut().enumerate() {
                if free == 0 {
                    break;
                }
                if c.state == ChunkState::Pending {
                    c.state = ChunkState::Writing;
                    c.submissions += 1;
                    actions.push(Action::Submit { chunk: i, attempt: c.submissions });
                    free -= 1;
                }
            }
        }
        if self.in_flight() > 0 {
            return;
        }
        let end = match self.stopping {
            Some(state) => state,
            None if self.chunks.iter().all(|c| c.state == ChunkState::Committed) => {
                BackfillState::Done
            }
            None => return,
        };
        self.state = end;
        actions.push(Action::Finish(end));
    }
}

/// [`chunk_days`] value that lets the range decide.
pub const AUTO_CHUNK_DAYS: u32 = 0;

/// Longest chunk the automatic choice makes. A chunk's memory grows with
/// its entities × dates; 183 dates measured fastest on a year (one round of
/// two chunks instead of two rounds of 92-date chunks, each of which rescans
/// the windows' history; see benchmarks/README.md).
pub const MAX_AUTO_CHUNK_DAYS: u32 = 183;

/// The chunk length for `dates` dates with `parallel` chunks in flight: as
/// few chunks of at most [`MAX_AUTO_CHUNK_DAYS`] as possible, their number
/// rounded up to a multiple of `parallel` so that no round leaves a slot
/// idle, all of about the same length.
pub fn auto_chunk_days(dates: usize, parallel: usize) -> u32 {
    let dates = dates.max(1);
    let parallel = parallel.max(1);
    let n = dates.div_ceil(MAX_AUTO_CHUNK_DAYS as usize).div_ceil(parallel) * parallel;
    let n = n.min(dates);
    u32::try_from(dates.div_ceil(n)).unwrap_or(MAX_AUTO_CHUNK_DAYS)
}

/// The chunk length asked for (`AUTO_CHUNK_DAYS`: from the range).
pub fn chunk_days(asked: u32, dates: usize, parallel: usize) -> u32 {
    match asked {
        AUTO_CHUNK_DAYS => auto_chunk_days(dates, parallel),
        n => n,
    }
}

/// Splits sorted dates into runs of consecutive dates of at most `max` days.
pub fn chunks(dates: &[NaiveDate], max: u32) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for &d in dates {
        match out.last_mut() {
            Some(c)
                if c.last + chrono::Duration::days(1) == d
                    && (d - c.first).num_days() < i64::from(max) =>
            {
                c.last = d;
            }
            _ => out.push(Chunk::new(d, d)),
        }
    }
    out
}

/// `YYYY-MM-DD`.
///
/// # Errors
/// A message naming `what` and the expected form.
pub fn parse_date(what: &str, s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{what} '{s}' is not a date; expected YYYY-MM-DD, e.g. 2024-03-31"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::ErrorClass;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    fn machine(n: usize, parallel: usize) -> Machine {
        let first = d("2024-01-01");
        let chunks = (0..n)
            .map(|i| {
                let day = first + chrono::Duration::days(i as i64);
                Chunk::new(day, day)
            })
            .collect();
        Machine::new(chunks, parallel, 2)
    }

    fn retryable() -> Failure {
        Failure::new(ErrorClass::External, true, "executor lost")
    }

    fn fatal() -> Failure {
        Failure::new(ErrorClass::User, false, "division by zero")
    }

    /// Drives chunk `i` from Pending/Writing through commit.
    fn complete(m: &mut Machine, i: usize) -> Vec<Action> {
        m.on(Event::Staged(i)).expect("staged");
        m.on(Event::Checked { chunk: i, passed: true }).expect("checked");
        m.on(Event::Committed(i)).expect("committed")
    }

    #[test]
    fn resume_fills_the_slots_and_the_last_commit_finishes() {
        let mut m = machine(3, 2);
        let a = m.on(Event::Resume).expect("resume");
        assert_eq!(
            a,
            vec![Action::Submit { chunk: 0, attempt: 1 }, Action::Submit { chunk: 1, attempt: 1 }]
        );
        assert_eq!(m.on(Event::Staged(0)).expect("staged"), vec![Action::Check(0)]);
        assert_eq!(
            m.on(Event::Checked { chunk: 0, passed: true }).expect("checked"),
            vec![Action::Commit(0)]
        );
        assert_eq!(
            m.on(Event::Committed(0)).expect("committed"),
            vec![Action::Discard(0), Action::Submit { chunk: 2, attempt: 1 }]
        );
        complete(&mut m, 1);
        let a = complete(&mut m, 2);
        assert_eq!(a.last(), Some(&Action::Finish(BackfillState::Done)));
        assert_eq!(m.state, BackfillState::Done);
    }

    #[test]
    fn nothing_to_do_finishes_at_once() {
        let mut m = machine(0, 2);
        assert_eq!(m.on(Event::Resume).expect("resume"), vec![Action::Finish(BackfillState::Done)]);
    }

    #[test]
    fn a_new_leader_resubmits_chunks_in_flight_and_keeps_committed_ones() {
        let mut m = machine(4, 2);
        m.on(Event::Resume).expect("resume");
        complete(&mut m, 0); // submits 2
        m.on(Event::Staged(1)).expect("staged");
        m.on(Event::Checked { chunk: 1, passed: true }).expect("checked"); // 1 committing
        // The leader dies; the record is restored elsewhere.
        let mut resumed = Machine::restore(m.chunks.clone(), m.state, m.parallel, m.max_retries);
        let a = resumed.on(Event::Resume).expect("resume");
        assert_eq!(
            a,
            vec![
                Action::Discard(1),
                Action::Discard(2),
                Action::Submit { chunk: 1, attempt: 2 },
                Action::Submit { chunk: 2, attempt: 2 },
            ]
        );
        assert_eq!(resumed.chunks[0].state, ChunkState::Committed);
        assert_eq!(resumed.chunks[0].submissions, 1);
    }

    #[test]
    fn retryable_failures_resubmit_until_retries_run_out() {
        let mut m = machine(1, 1);
        m.on(Event::Resume).expect("resume");
        for attempt in 2..=3 {
            let a = m.on(Event::JobFailed { chunk: 0, failure: retryable() }).expect("failed");
            assert_eq!(
                a,
                vec![
                    Action::StopJobs(0),
                    Action::Discard(0),
                    Action::Retried { chunk: 0, failure: retryable() },
                    Action::Submit { chunk: 0, attempt },
                ]
            );
        }
        let a = m.on(Event::JobFailed { chunk: 0, failure: retryable() }).expect("failed");
        assert_eq!(
            a,
            vec![Action::StopJobs(0), Action::Discard(0), Action::Finish(BackfillState::Failed)]
        );
        assert_eq!(m.chunks[0].failure, Some(retryable()));
    }

    #[test]
    fn a_fatal_failure_stops_new_chunks_and_ends_when_the_rest_is_done() {
        let mut m = machine(3, 2);
        m.on(Event::Resume).expect("resume");
        let a = m.on(Event::JobFailed { chunk: 0, failure: fatal() }).expect("failed");
        assert_eq!(a, vec![Action::StopJobs(0), Action::Discard(0)]);
        assert_eq!(m.state, BackfillState::Running);
        // Chunk 1 still commits; chunk 2 is never submitted.
        let a = complete(&mut m, 1);
        assert_eq!(a, vec![Action::Discard(1), Action::Finish(BackfillState::Failed)]);
        assert_eq!(m.chunks[2].state, ChunkState::Pending);
    }

    #[test]
    fn a_failed_check_commits_nothing_of_the_chunk() {
        let mut m = machine(2, 1);
        m.on(Event::Resume).expect("resume");
        m.on(Event::Staged(0)).expect("staged");
        let a = m.on(Event::Checked { chunk: 0, passed: false }).expect("checked");
        assert_eq!(a, vec![Action::Discard(0), Action::Finish(BackfillState::FailedQuality)]);
        assert_eq!(m.chunks[0].state, ChunkState::FailedQuality);
    }

    #[test]
    fn cancel_stops_jobs_in_flight_and_a_second_cancel_is_rejected() {
        let mut m = machine(3, 2);
        m.on(Event::Resume).expect("resume");
        complete(&mut m, 0);
        let a = m.on(Event::Cancel).expect("cancel");
        assert_eq!(
            a,
            vec![
                Action::StopJobs(1),
                Action::Discard(1),
                Action::StopJobs(2),
                Action::Discard(2),
                Action::Finish(BackfillState::Cancelled),
            ]
        );
        assert_eq!(m.chunks[0].state, ChunkState::Committed);
        assert_eq!(m.on(Event::Cancel), Err(Rejected::NotRunning(BackfillState::Cancelled)));
    }

    /// Puts chunk 0 of a one-chunk machine into `state`.
    fn in_state(state: ChunkState) -> Machine {
        let mut m = machine(2, 1);
        m.chunks[0].state = state;
        m.chunks[0].submissions = 1;
        m.stopping = m.failed_state();
        m
    }

    #[test]
    fn every_chunk_event_in_every_chunk_state() {
        use ChunkState as S;
        for state in ChunkState::ALL {
            // Staged applies only to Writing.
            let got = in_state(state).on(Event::Staged(0));
            match state {
                S::Writing => assert_eq!(got, Ok(vec![Action::Check(0)])),
                _ => assert!(matches!(got, Err(Rejected::Unexpected { .. })), "{state:?}: {got:?}"),
            }
            // Checked applies only to Checking.
            for passed in [true, false] {
                let mut m = in_state(state);
                let got = m.on(Event::Checked { chunk: 0, passed });
                match (state, passed) {
                    (S::Checking, true) => {
                        assert_eq!(got, Ok(vec![Action::Commit(0)]));
                        assert_eq!(m.chunks[0].state, S::Committing);
                    }
                    (S::Checking, false) => {
                        assert_eq!(m.chunks[0].state, S::FailedQuality);
                        assert!(got.expect("applies").contains(&Action::Discard(0)));
                    }
                    _ => assert!(matches!(got, Err(Rejected::Unexpected { .. })), "{state:?}"),
                }
            }
            // Committed applies only to Committing; the next chunk starts.
            let mut m = in_state(state);
            let got = m.on(Event::Committed(0));
            match state {
                S::Committing => {
                    assert_eq!(
                        got,
                        Ok(vec![Action::Discard(0), Action::Submit { chunk: 1, attempt: 1 }])
                    );
                }
                _ => assert!(matches!(got, Err(Rejected::Unexpected { .. })), "{state:?}"),
            }
            // JobFailed applies to every state in flight.
            let mut m = in_state(state);
            let got = m.on(Event::JobFailed { chunk: 0, failure: retryable() });
            if state.in_flight() {
                assert!(got.expect("applies").contains(&Action::Submit { chunk: 0, attempt: 2 }));
                assert_eq!(m.chunks[0].state, S::Writing);
            } else {
                assert!(matches!(got, Err(Rejected::Unexpected { .. })), "{state:?}");
            }
            // Resume resubmits a chunk in flight, leaves the others.
            let mut m = in_state(state);
            let got = m.on(Event::Resume).expect("resume");
            if state.in_flight() {
                assert_eq!(got[0], Action::Discard(0));
                assert!(got.contains(&Action::Submit { chunk: 0, attempt: 2 }));
            } else {
                assert!(!got.contains(&Action::Discard(0)), "{state:?}: {got:?}");
                assert_eq!(m.chunks[0].state, if state == S::Pending { S::Writing } else { state });
            }
            // Cancel stops a chunk in flight.
            let mut m = in_state(state);
            let got = m.on(Event::Cancel).expect("cancel");
            assert_eq!(got.contains(&Action::StopJobs(0)), state.in_flight(), "{state:?}");
            assert_eq!(m.state, BackfillState::Cancelled);
        }
        // An unknown chunk.
        assert_eq!(machine(1, 1).on(Event::Staged(7)), Err(Rejected::UnknownChunk(7)));
    }

    #[test]
    fn every_event_in_every_final_backfill_state_is_rejected() {
        for state in [
            BackfillState::Done,
            BackfillState::Failed,
            BackfillState::FailedQuality,
            BackfillState::Cancelled,
        ] {
            for event in [
                Event::Resume,
                Event::Staged(0),
                Event::Checked { chunk: 0, passed: true },
                Event::Committed(0),
                Event::JobFailed { chunk: 0, failure: fatal() },
                Event::Cancel,
            ] {
                let mut m = Machine::restore(
                    vec![Chunk::new(d("2024-01-01"), d("2024-01-01"))],
                    state,
                    1,
                    2,
                );
                assert_eq!(m.on(event), Err(Rejected::NotRunning(state)));
            }
        }
    }

    #[test]
    fn chunks_split_runs_of_consecutive_dates() {
        let dates = [d("2024-01-01"), d("2024-01-02"), d("2024-01-03"), d("2024-01-05")];
        let c = chunks(&dates, 2);
        let spans: Vec<(String, String)> =
            c.iter().map(|c| (c.first.to_string(), c.last.to_string())).collect();
        assert_eq!(
            spans,
            vec![
                ("2024-01-01".into(), "2024-01-02".into()),
                ("2024-01-03".into(), "2024-01-03".into()),
                ("2024-01-05".into(), "2024-01-05".into()),
            ]
        );
    }

    #[test]
    fn auto_chunks_fill_every_round_and_stay_bounded() {
        // A year on 2 slots: one round of two chunks.
        assert_eq!(auto_chunk_days(365, 2), 183);
        // A quarter: still both slots busy.
        assert_eq!(auto_chunk_days(90, 2), 45);
        // Two years: four chunks, none over the bound.
        assert_eq!(auto_chunk_days(730, 2), 183);
        // 400 dates: 3 chunks would leave a slot idle in the second round; 4 of 100.
        assert_eq!(auto_chunk_days(400, 2), 100);
        assert_eq!(auto_chunk_days(1, 2), 1);
        assert_eq!(auto_chunk_days(0, 0), 1);
        for dates in 1..1200 {
            for parallel in 1..5 {
                let days = auto_chunk_days(dates, parallel) as usize;
                assert!((1..=MAX_AUTO_CHUNK_DAYS as usize).contains(&days), "{dates}/{parallel}");
                let n = dates.div_ceil(days);
                assert!(n >= dates.div_ceil(MAX_AUTO_CHUNK_DAYS as usize), "{dates}/{parallel}");
            }
        }
    }
}
