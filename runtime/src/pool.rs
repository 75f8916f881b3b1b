//! A small thread pool for kernel steps: the calling thread and `threads − 1` workers take
//! chunks of one step's work items from a shared counter, and the call returns when all are
//! done.
//!
//! A decode step runs hundreds of kernels of a few microseconds each, so handing out work must
//! cost far less than a general-purpose scheduler's wake-up: idle workers spin on an epoch
//! counter for a while, then yield, then sleep on a condition variable. The caller never waits
//! for a worker that has not joined a job: it does every chunk left itself, closes the job, and
//! waits only for workers still inside it — so a busy machine that deschedules a worker slows a
//! step down to one thread, never stalls it.
//!
//! Invariant: one job at a time (`run` takes `&mut self`); a worker joins a job only while the
//! slot holds it, under the slot's lock, so once `run` empties the slot and sees no worker
//! inside, no one can touch the job again.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job<'a> = dyn Fn(i64, i64) + Sync + 'a;

#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);
// SAFETY: the pointer is only dereferenced by workers that joined the job, and `run` keeps the
// closure alive until they have left it.
unsafe impl Send for JobPtr {}

struct Shared {
    epoch: AtomicU64,
    /// The open job, if any; joining happens under this lock.
    slot: Mutex<Option<JobPtr>>,
    /// Workers inside the current job.
    inside: AtomicUsize,
    next: AtomicI64,
    total: AtomicI64,
    chunk: AtomicI64,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Idle polls before a worker starts yielding, and before it sleeps.
const SPINS: u32 = 2_000;
const YIELDS: u32 = 20_000;

impl Pool {
    /// A pool that runs jobs on `threads` threads in all (the caller's included).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            slot: Mutex::new(None),
            inside: AtomicUsize::new(0),
            next: AtomicI64::new(0),
            total: AtomicI64::new(0),
            chunk: AtomicI64::new(1),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|_| {
                let shared = shared.clone();
                std::thread::spawn(move || worker(&shared))
            })
            .collect();
        Pool { shared, workers }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(start, end)` over `0..total` in chunks of `chunk` items on every thread.
    pub fn run(&mut self, total: i64, chunk: i64, job: &Job<'_>) {
        if self.workers.is_empty() || total <= chunk {
            job(0, total);
            return;
        }
        let s = &*self.shared;
        s.next.store(0, SeqCst);
        s.total.store(total, SeqCst);
        s.chunk.store(chunk.max(1), SeqCst);
        // SAFETY: lifetime erased; the slot is emptied and every worker has left before return.
        let ptr = unsafe { std::mem::transmute::<&Job<'_>, &Job<'static>>(job) };
        *s.slot.lock().unwrap() = Some(JobPtr(ptr));
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _guard = s.sleep_lock.lock().unwrap();
            s.wake.notify_all();
        }
        take_chunks(s, job);
        *s.slot.lock().unwrap() = None;
        let mut polls = 0u32;
        while s.inside.load(SeqCst) > 0 {
            polls += 1;
            if polls < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

fn take_chunks(s: &Shared, job: &Job<'_>) {
    let (total, chunk) = (s.total.load(SeqCst), s.chunk.load(SeqCst));
    loop {
        let start = s.next.fetch_add(chunk, SeqCst);
        if start >= total {
            break;
        }
        job(start, (start + chunk).min(total));
    }
}

/// Waits until the epoch moves past `seen` (or the pool stops); returns the new epoch.
fn wait_for_job(s: &Shared, seen: u64) -> Option<u64> {
    let mut polls = 0u32;
    loop {
        if s.stop.load(SeqCst) {
            return None;
        }
        let epoch = s.epoch.load(SeqCst);
        if epoch != seen {
            return Some(epoch);
        }
        polls += 1;
        if polls < SPINS {
            std::hint::spin_loop();
        } else if polls < YIELDS {
            std::thread::yield_now();
        } else {
            let guard = s.sleep_lock.lock().unwrap();
            s.sleepers.fetch_add(1, SeqCst);
            let _guard = s
                .wake
                .wait_while(guard, |_| {
                    s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst)
                })
                .unwrap();
            s.sleepers.fetch_sub(1, SeqCst);
            polls = 0;
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0;
    while let Some(epoch) = wait_for_job(s, seen) {
        seen = epoch;
        let job = {
            let slot = s.slot.lock().unwrap();
            let job = *slot;
            if job.is_some() {
                s.inside.fetch_add(1, SeqCst);
            }
            job
        };
        if let Some(job) = job {
            // SAFETY: joined under the slot's lock; `run` waits for `inside` to drop to zero.
            take_chunks(s, unsafe { &*job.0 });
            s.inside.fetch_sub(1, SeqCst);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _guard = self.shared.sleep_lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
