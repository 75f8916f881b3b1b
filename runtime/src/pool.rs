//! A small thread pool for kernel steps: the calling thread and `threads − 1` workers take
//! chunks of one step's work items from a shared counter, and the call returns when all are
//! done.
//!
//! A decode step runs hundreds of kernels of a few microseconds each, so handing out work must
//! cost far less than a general-purpose scheduler's wake-up: workers spin on an epoch counter
//! for a while after each job and only then sleep on a condition variable.
//!
//! Invariant: one job at a time (`run` takes `&mut self`); the job closure outlives the call
//! because `run` waits for every worker to finish with it before returning.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job<'a> = dyn Fn(i64, i64) + Sync + 'a;

struct Shared {
    epoch: AtomicU64,
    job_meta: Mutex<()>,
    next: AtomicI64,
    total: AtomicI64,
    chunk: AtomicI64,
    finished: AtomicUsize,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    wake: Condvar,
    /// The current job; set while a `run` call is waiting for it.
    job_ptr: Mutex<Option<JobPtr>>,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);
// SAFETY: the pointer is only dereferenced while `run` keeps the closure alive.
unsafe impl Send for JobPtr {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

const SPINS: u32 = 200_000;

impl Pool {
    /// A pool that runs jobs on `threads` threads in all (the caller's included).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job_meta: Mutex::new(()),
            next: AtomicI64::new(0),
            total: AtomicI64::new(0),
            chunk: AtomicI64::new(1),
            finished: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            job_ptr: Mutex::new(None),
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
        // SAFETY: lifetime erased; workers drop the pointer before `finished` reaches the count.
        let ptr: *const Job<'static> =
            unsafe { std::mem::transmute::<&Job<'_>, &Job<'static>>(job) };
        *s.job_ptr.lock().unwrap() = Some(JobPtr(ptr));
        s.next.store(0, SeqCst);
        s.total.store(total, SeqCst);
        s.chunk.store(chunk.max(1), SeqCst);
        s.finished.store(0, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _guard = s.job_meta.lock().unwrap();
            s.wake.notify_all();
        }
        take_chunks(s, job);
        while s.finished.load(SeqCst) < self.workers.len() {
            std::hint::spin_loop();
        }
        *s.job_ptr.lock().unwrap() = None;
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

fn worker(s: &Shared) {
    let mut seen = 0;
    loop {
        let mut spins = 0;
        loop {
            if s.stop.load(SeqCst) {
                return;
            }
            let epoch = s.epoch.load(SeqCst);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.job_meta.lock().unwrap();
            s.sleepers.fetch_add(1, SeqCst);
            let _guard = s
                .wake
                .wait_while(guard, |_| {
                    s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst)
                })
                .unwrap();
            s.sleepers.fetch_sub(1, SeqCst);
            spins = 0;
        }
        let ptr = s
            .job_ptr
            .lock()
            .unwrap()
            .expect("a job is posted with its epoch");
        // SAFETY: `run` keeps the closure alive until this worker reports finished.
        take_chunks(s, unsafe { &*ptr.0 });
        s.finished.fetch_add(1, SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _guard = self.shared.job_meta.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
