//! Separation benchmark: quality of the built-in `dsp-centre` separator against the naive
//! L−R (mid/side) baseline on synthetic mixtures with known stems, its speed, and the peak
//! memory of the whole file path (`uvr separate`: decode, separate, write) for a 5-minute and
//! a 60-minute input.
//!
//! `make bench-separation` (or `cargo bench --bench separation`). Under `cargo test` it runs
//! a short smoke version.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use uvr::audio::{Frame, SAMPLE_RATE};
use uvr::separation::dsp::{CentreExtractor, Params};
use uvr::separation::{NoListener, Separator, SliceSource, VecSink, sdr};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A voice-like source: a sung melody (harmonics with vibrato, formant-shaped), in syllables.
fn voice(n: usize, seed: u64) -> Vec<f32> {
    let sr = SAMPLE_RATE as f32;
    let notes = [220.0, 247.0, 262.0, 294.0, 330.0, 294.0, 262.0, 247.0];
    let mut rng = Rng(seed);
    let mut phase = 0.0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / sr;
            let note = notes[(t / 0.5) as usize % notes.len()];
            let f0 = note * (1.0 + 0.01 * (2.0 * std::f32::consts::PI * 5.5 * t).sin());
            phase += 2.0 * std::f32::consts::PI * f0 / sr;
            let syllable = (std::f32::consts::PI * (t % 0.5) / 0.5).sin().powf(0.5);
            let formant = |h: f32| {
                let f = f0 * h;
                (-((f - 700.0) / 400.0).powi(2)).exp()
                    + 0.6 * (-((f - 1200.0) / 500.0).powi(2)).exp()
                    + 0.1
            };
            let s: f32 = (1..12)
                .map(|h| (phase * h as f32).sin() * formant(h as f32) / h as f32)
                .sum();
            (s * 0.35 + 0.01 * rng.next()) * syllable
        })
        .collect()
}

/// A wide accompaniment: hard-panned chords, decorrelated pads, and a centred bass line.
fn accompaniment(n: usize, seed: u64) -> Vec<Frame> {
    let sr = SAMPLE_RATE as f32;
    let mut rl = Rng(seed);
    let mut rr = Rng(seed ^ 0x9e37_79b9);
    let (mut pl, mut pr) = (0.0f32, 0.0f32);
    (0..n)
        .map(|i| {
            let t = i as f32 / sr;
            let chord_l = [130.8, 164.8, 196.0];
            let chord_r = [146.8, 174.6, 220.0];
            let saw = |f: f32| 2.0 * ((t * f) % 1.0) - 1.0;
            let l_inst: f32 = chord_l.iter().map(|f| saw(*f) * 0.08).sum();
            let r_inst: f32 = chord_r.iter().map(|f| saw(*f) * 0.08).sum();
            // Decorrelated pads: filtered noise, independent per channel.
            pl = 0.97 * pl + 0.03 * rl.next();
            pr = 0.97 * pr + 0.03 * rr.next();
            let bass = (2.0 * std::f32::consts::PI * 55.0 * t).sin() * 0.2;
            [l_inst + pl * 1.5 + bass, r_inst + pr * 1.5 + bass]
        })
        .collect()
}

fn write_wav(path: &Path, seconds: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let block = SAMPLE_RATE as usize * 10;
    let v = voice(block, 1);
    let a = accompaniment(block, 2);
    for _ in 0..(seconds as usize * SAMPLE_RATE as usize).div_ceil(block) {
        for (v, a) in v.iter().zip(&a) {
            w.write_sample(((v + a[0]) * 0.7 * 32767.0).clamp(-32768.0, 32767.0) as i16)
                .unwrap();
            w.write_sample(((v + a[1]) * 0.7 * 32767.0).clamp(-32768.0, 32767.0) as i16)
                .unwrap();
        }
    }
    w.finalize().unwrap();
}

/// Peak RSS (MiB) and wall time of `uvr separate` on `input`.
fn measure(input: &Path, out: &Path) -> Option<(f64, f64)> {
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M %e"])
        .arg(env!("CARGO_BIN_EXE_uvr"))
        .arg("separate")
        .arg(input)
        .args(["--overwrite", "-o"])
        .arg(out)
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last()?;
    let mut it = last.split_whitespace();
    let kb: f64 = it.next()?.parse().ok()?;
    let secs: f64 = it.next()?.parse().ok()?;
    Some((kb / 1024.0, secs))
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = if quick { 5 } else { 60 };
    let n = SAMPLE_RATE as usize * seconds;
    let vocals: Vec<Frame> = voice(n, 1).into_iter().map(|v| [v, v]).collect();
    let inst = accompaniment(n, 2);
    let mix: Vec<Frame> = vocals
        .iter()
        .zip(&inst)
        .map(|(v, a)| [v[0] + a[0], v[1] + a[1]])
        .collect();

    let mut x = CentreExtractor::new(Params::default());
    let start = Instant::now();
    let mut sink = VecSink::default();
    x.separate(&mut SliceSource::new(&mix), &mut sink, &mut NoListener)
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let base_v: Vec<Frame> = mix.iter().map(|f| [(f[0] + f[1]) / 2.0; 2]).collect();
    let base_i: Vec<Frame> = mix
        .iter()
        .map(|f| [(f[0] - f[1]) / 2.0, (f[1] - f[0]) / 2.0])
        .collect();
    println!(
        "dsp-centre on a {seconds} s synthetic mixture (centred voice over wide accompaniment + centred bass)"
    );
    println!(
        "  SDR vocals        dsp-centre {:>6.2} dB   naive L-R (mid) {:>6.2} dB",
        sdr(&vocals, &sink.stems[0]),
        sdr(&vocals, &base_v)
    );
    println!(
        "  SDR instrumental  dsp-centre {:>6.2} dB   naive L-R (side) {:>6.2} dB",
        sdr(&inst, &sink.stems[1]),
        sdr(&inst, &base_i)
    );
    println!(
        "  speed             {:.2} s per minute of audio (in memory, 1 thread)",
        elapsed / seconds as f64 * 60.0
    );

    let dir = tempfile::tempdir().unwrap();
    let (short, long) = if quick { (5, 10) } else { (300, 3600) };
    let mut peaks = Vec::new();
    for secs in [short, long] {
        let input = dir.path().join(format!("in-{secs}.wav"));
        write_wav(&input, secs);
        let out = dir.path().join(format!("out-{secs}"));
        match measure(&input, &out) {
            Some((mib, wall)) => {
                println!(
                    "  uvr separate, {:>4} s input: peak RSS {:>7.1} MiB, {:>7.2} s wall ({:.2} s per minute of audio)",
                    secs,
                    mib,
                    wall,
                    wall / secs as f64 * 60.0
                );
                peaks.push(mib);
            }
            None => {
                println!("  uvr separate, {secs} s input: /usr/bin/time unavailable, not measured")
            }
        }
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_dir_all(&out);
    }
    if let [a, b] = peaks[..] {
        println!("  peak RSS ratio long/short: {:.3}", b / a);
    }
}
