//! A fixed piece of CPU work timed on each of the machine's CPUs, before
//! the load (the agents online and idle) and after the agents went
//! offline: how fast the CPUs run at those moments, measured apart from
//! the dispatcher.
//!
//! The host's other tenants can slow this guest's CPUs without any steal
//! showing in `/proc/stat`: on 5 Dec 2026 a CPU-bound loop took 385–440 ms
//! between runs in the machine's fast minutes and up to 820 ms in its slow
//! ones, when the same hand-off load cost Redis, the server and the tool a
//! third more CPU. The probe is that loop's stand-in in Rust: random reads
//! and writes over a 4 MiB table (past the per-core caches) with a
//! data-dependent branch, the kind of work the dispatcher's processes do.
//! It is reported, never used to invalidate a run: it reads the moments
//! around the measured window, not the window itself.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

/// Timings per reading; the median is reported.
pub const REPETITIONS: usize = 5;
/// 4 MiB of u32.
const TABLE_WORDS: usize = 1 << 20;
const STEPS: u32 = 1_000_000;

/// One CPU's readings, ms (the median of [`REPETITIONS`] timings).
#[derive(Clone, Debug, Serialize)]
pub struct CpuReading {
    pub cpu: usize,
    pub before_ms: f64,
    pub after_ms: f64,
}

/// The fixed work once, ms.
fn work_once(table: &mut [u32]) -> f64 {
    let mask = table.len() - 1;
    let start = Instant::now();
    let mut index = 0usize;
    let mut acc = 0u32;
    for step in 0..STEPS {
        let value = table[index];
        if value & 1 == 0 {
            acc = acc.wrapping_add(value);
        } else {
            acc ^= value.rotate_left(7);
        }
        table[index] = value ^ acc ^ step;
        index = (value ^ acc) as usize & mask;
    }
    black_box(acc);
    start.elapsed().as_secs_f64() * 1e3
}

/// The median of [`REPETITIONS`] timings of the fixed work in this
/// process, on whatever CPU it runs on (`cpu-probe`, under taskset).
pub fn measure() -> f64 {
    let mut table: Vec<u32> = (0..TABLE_WORDS as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    // Once to bring the table in.
    work_once(&mut table);
    let mut times: Vec<f64> = (0..REPETITIONS).map(|_| work_once(&mut table)).collect();
    median(&mut times)
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

/// `cpu-probe` run in its own process pinned to `cpu`, ms.
async fn on_cpu(cpu: usize) -> anyhow::Result<f64> {
    let output = crate::procstat::this_program_on(Some(cpu))?
        .arg("cpu-probe")
        .output()
        .await
        .context("cannot run taskset (util-linux)")?;
    let text = crate::procstat::stdout_of(&output, &format!("the CPU probe on cpu{cpu}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("the CPU probe on cpu{cpu} printed `{}`", text.trim()))
}

/// A reading on each of `cpus`, one after the other.
pub async fn read(cpus: &[usize]) -> anyhow::Result<Vec<f64>> {
    if cpus.is_empty() {
        bail!("no CPUs listed in /proc/stat");
    }
    let mut readings = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        readings.push(on_cpu(cpu).await?);
    }
    Ok(readings)
}

/// Pairs the readings before and after with their CPUs.
pub fn pair(cpus: &[usize], before: &[f64], after: &[f64]) -> Vec<CpuReading> {
    cpus.iter()
        .zip(before.iter().zip(after))
        .map(|(&cpu, (&before_ms, &after_ms))| CpuReading {
            cpu,
            before_ms,
            after_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_timing() {
        assert_eq!(median(&mut [5.0, 1.0, 9.0, 3.0, 7.0]), 5.0);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn the_work_takes_time_and_the_same_work_each_time() {
        let mut a: Vec<u32> = (0..TABLE_WORDS as u32).collect();
        let mut b = a.clone();
        assert!(work_once(&mut a) > 0.0);
        work_once(&mut b);
        assert_eq!(a, b, "the work depends on nothing but the table");
    }

    #[test]
    fn readings_pair_by_cpu() {
        let pairs = pair(&[0, 3], &[1.0, 2.0], &[3.0, 4.0]);
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            (pairs[1].cpu, pairs[1].before_ms, pairs[1].after_ms),
            (3, 2.0, 4.0)
        );
    }
}
