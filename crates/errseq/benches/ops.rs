//! The cost of each operation, alone and with a second thread writing to the
//! same word.
//!
//! `cargo bench -p errseq --bench ops`; the numbers are in the README.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use errseq::{ErrSeq, Errno};

const EIO: Errno = Errno::EIO;
const ENOSPC: Errno = Errno::ENOSPC;

/// Every operation on `es`. Alone, each finds the word as described; with a
/// writer running, whatever the writer left.
fn ops(g: &mut BenchmarkGroup<'_, WallTime>, es: &ErrSeq) {
    // An error that was told, so that observers start at the current value.
    let mut told = es.sample();
    es.set(EIO);
    let _ = es.check_and_advance(&mut told);

    // One load each when nothing changed.
    g.bench_function("check", |b| {
        let c = es.sample();
        b.iter(|| es.check(black_box(c)));
    });
    g.bench_function("check_and_advance", |b| {
        let mut c = es.sample();
        b.iter(|| es.check_and_advance(black_box(&mut c)));
    });
    g.bench_function("peek_and_advance", |b| {
        let mut c = es.peek();
        b.iter(|| es.peek_and_advance(black_box(&mut c)));
    });
    g.bench_function("sample", |b| b.iter(|| es.sample()));
    g.bench_function("peek", |b| b.iter(|| es.peek()));
    g.bench_function("last_error", |b| b.iter(|| es.last_error()));

    // The same error again while it is pending and untold: one load.
    g.bench_function("set/repeat", |b| {
        es.set(ENOSPC);
        b.iter(|| es.set(black_box(ENOSPC)));
    });
    // A different errno each time, nobody looking: one load, one CAS.
    g.bench_function("set/replace", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            es.set(black_box(if flip { EIO } else { ENOSPC }));
        });
    });

    // The paths that write, in pairs that leave the word as they found it.
    // set (counter bump, one CAS) + check_and_advance (report, one CAS).
    g.bench_function("set+check_and_advance", |b| {
        let mut c = es.sample();
        b.iter(|| {
            es.set(black_box(EIO));
            es.check_and_advance(&mut c)
        });
    });
    // set (one CAS) + peek (one fetch_or).
    g.bench_function("set+peek", |b| {
        b.iter(|| {
            es.set(black_box(EIO));
            es.peek()
        });
    });
    // set (one CAS) + sample of the untold error (one fetch_or).
    g.bench_function("set+sample", |b| {
        b.iter(|| {
            es.set(black_box(EIO));
            es.sample()
        });
    });
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended");
    ops(&mut g, &ErrSeq::new());
    g.finish();
}

/// The same operations while another thread records an error and reports it
/// to itself in a loop, so that the word's cache line moves between cores.
fn with_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("with_writer");
    let es = ErrSeq::new();
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            let mut cursor = es.sample();
            let mut flip = false;
            while !stop.load(Relaxed) {
                flip = !flip;
                es.set(if flip { EIO } else { ENOSPC });
                let _ = es.check_and_advance(&mut cursor);
            }
        });
        ops(&mut g, &es);
        stop.store(true, Relaxed);
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended, with_writer
}
criterion_main!(benches);
