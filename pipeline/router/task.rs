//! The state of one assigned input partition in the run loop: its open site
//! batches, its read and committed positions, and the offsets whose effect
//! is staged or already committed above the committed offset.

use std::collections::{BTreeSet, HashSet};

use crate::config::WindowConfig;
use crate::intake::ValidOrder;
use crate::routing::DispatchHistory;
use crate::window::SiteWindows;

/// One input partition's task.
#[derive(Debug)]
pub(super) struct PartitionTask {
    /// Open site batches.
    pub(super) windows: SiteWindows<ValidOrder>,
    /// Order ids held in `windows`: a re-send arriving while the original
    /// still waits in its batch is a duplicate too, though the dedup store
    /// only learns of the original when its batch is dispatched.
    pub(super) held_ids: HashSet<String>,
    /// Offset this task's consumption started from, or the last committed
    /// one. A rewind seeks here.
    pub(super) committed: i64,
    /// Next offset to read (last seen + 1).
    pub(super) next_offset: i64,
    /// Offsets at or above `committed` whose effect is already committed:
    /// skipped when a rewind reads them again in this process. (After a
    /// crash the dedup store plays this role.)
    pub(super) done_above_committed: BTreeSet<i64>,
    /// Offsets whose effect is staged in the open transaction.
    pub(super) staged: Vec<i64>,
    /// Recently routed orders of this partition's sites, for repeat and
    /// PM-due-soon flags. In memory only: see the routing module.
    pub(super) history: DispatchHistory,
}

impl PartitionTask {
    pub(super) fn new(window: WindowConfig, first_offset: i64, history: DispatchHistory) -> Self {
        Self {
            windows: SiteWindows::new(window),
            held_ids: HashSet::new(),
            committed: first_offset,
            next_offset: first_offset,
            done_above_committed: BTreeSet::new(),
            staged: Vec::new(),
            history,
        }
    }

    /// The offset to commit now: nothing below it is held or unread.
    pub(super) fn commit_target(&self) -> i64 {
        self.windows
            .lowest_held_offset()
            .map_or(self.next_offset, |held| held.min(self.next_offset))
    }

    /// Forgets everything not committed: open batches and staged offsets.
    pub(super) fn discard_uncommitted(&mut self) {
        self.windows.discard();
        self.held_ids.clear();
        self.staged.clear();
        self.next_offset = self.committed;
    }

    /// Records a successful commit up to `target`.
    pub(super) fn committed_to(&mut self, target: i64) {
        self.committed = target;
        let staged = std::mem::take(&mut self.staged);
        self.done_above_committed
            .extend(staged.into_iter().filter(|&o| o >= target));
        self.done_above_committed = self.done_above_committed.split_off(&target);
    }
}
