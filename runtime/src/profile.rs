//! Per-step timing, shared by the CPU and GPU runners: a runner that profiles adds the time of
//! each of its program's steps to a total per step, indexed as `ProgramDesc::steps`.

use crate::manifest::ProgramDesc;
use std::time::Duration;

pub trait Profiled {
    /// The program the runner runs.
    fn desc(&self) -> &ProgramDesc;
    /// Starts (or stops) timing every step.
    fn set_profiling(&mut self, on: bool);
    /// Each step's time since profiling started, when profiling.
    fn profile(&self) -> Option<&[Duration]>;
}

impl Profiled for crate::executor::Runner<'_> {
    fn desc(&self) -> &ProgramDesc {
        crate::executor::Runner::desc(self)
    }

    fn set_profiling(&mut self, on: bool) {
        crate::executor::Runner::set_profiling(self, on)
    }

    fn profile(&self) -> Option<&[Duration]> {
        crate::executor::Runner::profile(self)
    }
}
