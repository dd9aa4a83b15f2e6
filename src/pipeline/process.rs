//! What a processor does with one claimed task: download the audio to the staging
//! directory, then — on a dedicated thread, never on an async arbiter — decode it, separate
//! it and write the requested stems, reporting progress and honouring a stop request between
//! chunks. Everything streams: peak memory depends on the chunk size, not the song length.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{JobError, ProcessorConfig};
use crate::audio::encode::{Encoding, StemWriter, output_rate};
use crate::audio::fetch::{self, FetchError};
use crate::audio::{AudioReader, Frame, SAMPLE_RATE};
use crate::separation::{Control, Listener, SeparateError, StemSink};

use crate::task::result::{StageResult, Stem, Timings, round3};
use crate::task::{TaskId, TaskRecord};

/// Progress and stop flag shared between the separation thread and the actor.
#[derive(Debug, Default)]
pub struct Progress {
    /// 0-100.
    pub percent: AtomicU8,
    /// Set to make the separation stop at its next checkpoint.
    pub stop: AtomicBool,
    /// Input frames (44.1 kHz) separated so far, across the models of an ensemble: what
    /// the real-time factor on a terminal is computed from.
    pub frames: AtomicU64,
}

impl Listener for Arc<Progress> {
    fn progress(&mut self, done: u64, total: Option<u64>) -> Control {
        self.frames.store(done, Ordering::Relaxed);
        if let Some(total) = total.filter(|t| *t > 0) {
            // Downloading counted as the first 5 %, writing as the last 1 %.
            let p = 5 + (done.min(total) * 94 / total) as u8;
            self.percent.store(p, Ordering::Relaxed);
        }
        if self.stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

/// The staging directory of a task.
pub fn task_dir(staging: &Path, id: &TaskId) -> PathBuf {
    staging.join(id.as_str())
}

impl From<FetchError> for JobError {
    fn from(e: FetchError) -> Self {
        JobError::new(e.code(), e.to_string(), e.retryable())
    }
}

impl From<SeparateError> for JobError {
    fn from(e: SeparateError) -> Self {
        let retryable = matches!(e, SeparateError::Output(_))
            || matches!(&e, SeparateError::Input(d) if d.code() == "internal_error");
        JobError::new(e.code(), e.to_string(), retryable)
    }
}

/// Downloads the task's audio into `dir` (the attempt's staging directory).
pub async fn download(
    cfg: &ProcessorConfig,
    client: &reqwest::Client,
    record: &TaskRecord,
    dir: &Path,
) -> Result<(PathBuf, u64), JobError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| JobError::internal(format!("staging directory {}: {e}", dir.display())))?;
    let dest = dir.join("source.audio");
    if super::uploads::is_upload(&record.request.audio) {
        // Uploaded with the request: linked (or copied) from the uploads directory, which
        // keeps it for a retry until the task ends.
        let uploads = super::uploads::Uploads::new(&cfg.staging_dir, cfg.fetch.max_bytes);
        let missing = || {
            JobError::new(
                "upload_missing",
                "the uploaded audio is gone (uploads are kept until their task ends)",
                false,
            )
        };
        let source = uploads.resolve(&record.request.audio).ok_or_else(missing)?;
        let _ = tokio::fs::remove_file(&dest).await;
        if tokio::fs::hard_link(&source, &dest).await.is_err() {
            tokio::fs::copy(&source, &dest)
                .await
                .map_err(|_| missing())?;
        }
        let bytes = tokio::fs::metadata(&dest)
            .await
            .map_err(|e| JobError::internal(e.to_string()))?
            .len();
        return Ok((dest, bytes));
    }
    let (_, bytes) = fetch::download(client, &cfg.fetch, &record.request.audio, &dest).await?;
    Ok((dest, bytes))
}

struct FileSink {
    writers: Vec<Option<StemWriter>>,
    /// Bytes every stem file together may reach (`u64::MAX`: no budget).
    budget: u64,
    encoding: Encoding,
    /// The output rate.
    rate: u32,
    /// Stems written.
    writing: u64,
    /// Frames written per stem (44.1 kHz).
    frames: Vec<u64>,
    over_budget: bool,
}

impl FileSink {
    /// The most bytes the stems take once the longest has `frames` frames (44.1 kHz).
    fn bytes_for(&self, frames: u64) -> u64 {
        let at_rate = (u128::from(frames) * u128::from(self.rate) / u128::from(SAMPLE_RATE)) as u64;
        self.encoding
            .max_file_bytes(at_rate, self.rate)
            .saturating_mul(self.writing)
    }
}

impl StemSink for FileSink {
    fn write(&mut self, stem: usize, frames: &[Frame]) -> Result<(), SeparateError> {
        if matches!(self.writers.get(stem), Some(Some(_))) {
            self.frames[stem] += frames.len() as u64;
            let longest = self.frames.iter().copied().max().unwrap_or(0);
            // A source whose length was unknown (or misreported) is held to the budget as
            // its stems grow.
            if self.bytes_for(longest) > self.budget {
                self.over_budget = true;
                return Err(SeparateError::Output("over the output budget".into()));
            }
        }
        if let Some(Some(w)) = self.writers.get_mut(stem) {
            w.write(frames)
                .map_err(|e| SeparateError::Output(e.to_string()))?;
        }
        Ok(())
    }
}

fn output_too_large(budget: u64, what: String) -> JobError {
    JobError::new(
        "output_too_large",
        format!(
            "{what}, more than MAX_OUTPUT_BYTES ({budget} bytes); ask for fewer stems or a smaller format"
        ),
        false,
    )
}

/// Decodes, separates and writes the stems of a downloaded task. Blocking: run it on a
/// dedicated thread. Returns the stage result stored on the task record.
pub fn separate(
    cfg: &ProcessorConfig,
    record: &TaskRecord,
    source: &Path,
    progress: Arc<Progress>,
) -> Result<StageResult, JobError> {
    let dir = source
        .parent()
        .expect("source lies in the attempt directory");
    let job = SeparateJob {
        source,
        out_dir: dir,
        relative_to: &cfg.staging_dir,
        model: record
            .request
            .model
            .clone()
            .unwrap_or_else(|| cfg.default_model.clone()),
        output_format: record.request.output_format.clone(),
        bitrate: record.request.bitrate,
        sample_rate: record.request.sample_rate,
        ensemble: match (&record.request.models, &record.request.ensemble) {
            (Some(models), Some(algorithm)) => Some((
                models.clone(),
                algorithm
                    .parse()
                    .map_err(|e: String| JobError::new("unknown_ensemble", e, false))?,
            )),
            _ => None,
        },
        stems: record.request.stems.clone(),
        max_seconds: cfg.max_audio_seconds,
        max_output_bytes: cfg.max_output_bytes,
        engine: &cfg.engine,
    };
    let result = separate_file(&job, progress)?;
    let _ = std::fs::remove_file(source);
    Ok(result)
}

/// One separation of a local file into a directory.
#[derive(Debug)]
pub struct SeparateJob<'a> {
    /// The input audio file.
    pub source: &'a Path,
    /// Where the stems are written.
    pub out_dir: &'a Path,
    /// Stem paths in the result are relative to this directory.
    pub relative_to: &'a Path,
    /// Model name.
    pub model: String,
    /// `output_format` (`None`: 16-bit WAV).
    pub output_format: Option<String>,
    /// `bitrate` of a lossy format, kbps.
    pub bitrate: Option<u32>,
    /// `sample_rate` of the stems (`None`: 44.1 kHz).
    pub sample_rate: Option<crate::task::OutputRate>,
    /// An ensemble: its models (each run once, `model` unused) and how they are combined.
    pub ensemble: Option<(Vec<String>, crate::separation::ensemble::Algorithm)>,
    /// Stems to write (`None`: all the model has).
    pub stems: Option<Vec<String>>,
    /// Duration cap in seconds (0: none).
    pub max_seconds: u64,
    /// Most bytes all stem files of the job together may take (0: no budget).
    pub max_output_bytes: u64,
    /// Where separators come from.
    pub engine: &'a crate::engine::Engine,
}

impl SeparateJob<'_> {
    /// The stems' encoding: the format with its bit rate, at a rate it can be written at.
    fn encoding(&self) -> Result<Encoding, JobError> {
        Encoding::parse(self.output_format.as_deref(), self.bitrate)
            .and_then(|e| e.check_rate(self.sample_rate).map(|()| e))
            .map_err(|e| JobError::new(e.code, e.to_string(), false))
    }
}

/// Decodes, separates and writes stems (blocking). Returns a JSON summary: model, family, stems
/// (file, bytes, sha256), duration, timings (`model_seconds`: loading and warming up the
/// model, non-zero only for a process's first job with it; `separation_seconds`: decoding,
/// separating and writing) and the real-time factor of the separation.
pub fn separate_file(
    job: &SeparateJob<'_>,
    progress: Arc<Progress>,
) -> Result<StageResult, JobError> {
    if let Some((models, algorithm)) = &job.ensemble {
        return separate_ensemble(job, models, *algorithm, progress);
    }
    let started = Instant::now();
    let mut separator = job.engine.build(&job.model)?;
    // Loading and warming up the model (only the first time a process uses it).
    let model_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let encoding = job.encoding()?;
    let wanted: Vec<String> = job.stems.clone().unwrap_or_else(|| separator.stems());
    let mut reader = AudioReader::open(job.source, job.max_seconds)
        .map_err(|e| JobError::from(SeparateError::from(e)))?;
    let source_rate = reader.source_rate();
    let rate = output_rate(encoding, job.sample_rate, source_rate);
    let budget = match job.max_output_bytes {
        0 => u64::MAX,
        n => n,
    };
    let writing = separator
        .stems()
        .iter()
        .filter(|s| wanted.contains(s))
        .count() as u64;
    let stem_count = separator.stems().len();
    let mut sink = FileSink {
        writers: Vec::new(),
        budget,
        encoding,
        rate,
        writing,
        frames: vec![0; stem_count],
        over_budget: false,
    };
    // Checked before anything is written when the source says how long it is.
    if let Some(frames) = reader.total_frames() {
        let total = sink.bytes_for(frames);
        if total > budget {
            return Err(output_too_large(
                budget,
                format!(
                    "{writing} stems of {:.0} s would take {total} bytes",
                    frames as f64 / f64::from(SAMPLE_RATE)
                ),
            ));
        }
    }
    std::fs::create_dir_all(job.out_dir)
        .map_err(|e| JobError::internal(format!("{}: {e}", job.out_dir.display())))?;
    let mut writers = Vec::new();
    let mut files = Vec::new();
    for stem in separator.stems() {
        if wanted.contains(&stem) {
            let path = job.out_dir.join(format!("{stem}.{}", encoding.extension()));
            let w = StemWriter::create(&path, encoding, rate)
                .map_err(|e| JobError::internal(format!("creating {}: {e}", path.display())))?;
            writers.push(Some(w));
            files.push((stem, path));
        } else {
            writers.push(None);
        }
    }
    sink.writers = writers;
    let mut listener = progress.clone();
    let frames = match separator.separate(&mut reader, &mut sink, &mut listener) {
        Ok(frames) => frames,
        Err(_) if sink.over_budget => {
            return Err(output_too_large(
                budget,
                format!("{writing} stems grew past the budget while writing"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    drop(reader);
    for w in sink.writers.into_iter().flatten() {
        w.finish()
            .map_err(|e| JobError::internal(format!("finishing a stem: {e}")))?;
    }
    let mut stems = BTreeMap::new();
    for (stem, path) in files {
        stems.insert(stem, stem_entry(&path, job.relative_to)?);
    }
    progress.percent.store(100, Ordering::Relaxed);
    Ok(summary(Summary {
        model: separator.name().to_string(),
        family: separator.family().to_string(),
        stems,
        encoding,
        rate,
        frames,
        source_rate,
        model_seconds,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// What the result of a separation says.
struct Summary {
    model: String,
    family: String,
    stems: BTreeMap<String, Stem>,
    encoding: Encoding,
    rate: u32,
    frames: u64,
    source_rate: u32,
    model_seconds: f64,
    seconds: f64,
}

/// The stage result stored on the task record.
fn summary(s: Summary) -> StageResult {
    let duration = s.frames as f64 / f64::from(SAMPLE_RATE);
    StageResult {
        model: Some(s.model),
        family: Some(s.family),
        stems: s.stems,
        format: Some(s.encoding.name().to_string()),
        sample_rate: Some(s.rate),
        bitrate: s.encoding.kbps(),
        duration_seconds: Some(round3(duration)),
        source_sample_rate: Some(s.source_rate),
        timings: Timings {
            model_seconds: Some(round3(s.model_seconds)),
            separation_seconds: Some(round3(s.seconds)),
            ..Timings::default()
        },
        realtime_factor: Some(round3(if duration > 0.0 {
            s.seconds / duration
        } else {
            0.0
        })),
        ..StageResult::default()
    }
}

/// Progress of one model of an ensemble: its share of the whole.
struct Share {
    inner: Arc<Progress>,
    index: u64,
    count: u64,
}

impl Listener for Share {
    fn progress(&mut self, done: u64, total: Option<u64>) -> Control {
        if let Some(total) = total {
            self.inner
                .frames
                .store(self.index * total + done, Ordering::Relaxed);
        }
        if let Some(total) = total.filter(|t| *t > 0) {
            let whole = (self.index * total + done.min(total)) * 94 / (self.count * total);
            self.inner.percent.store(5 + whole as u8, Ordering::Relaxed);
        }
        if self.inner.stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

/// Writes each stem as raw little-endian `f32` frames (an ensemble's intermediate).
struct RawSink {
    writers: Vec<Option<std::io::BufWriter<std::fs::File>>>,
}

impl StemSink for RawSink {
    fn write(&mut self, stem: usize, frames: &[Frame]) -> Result<(), SeparateError> {
        use std::io::Write;
        if let Some(Some(w)) = self.writers.get_mut(stem) {
            for f in frames {
                let (l, r) = (
                    if f[0].is_finite() { f[0] } else { 0.0 },
                    if f[1].is_finite() { f[1] } else { 0.0 },
                );
                w.write_all(&l.to_le_bytes())
                    .and_then(|()| w.write_all(&r.to_le_bytes()))
                    .map_err(|e| SeparateError::Output(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// An ensemble: every model separates the input once into raw stems, then each stem is
/// the combination of the models' outputs, encoded as asked.
fn separate_ensemble(
    job: &SeparateJob<'_>,
    models: &[String],
    algorithm: crate::separation::ensemble::Algorithm,
    progress: Arc<Progress>,
) -> Result<StageResult, JobError> {
    let started = Instant::now();
    let encoding = job.encoding()?;
    let work = job.out_dir.join("ensemble");
    std::fs::create_dir_all(&work)
        .map_err(|e| JobError::internal(format!("{}: {e}", work.display())))?;
    let cleanup = |r: Result<StageResult, JobError>| {
        let _ = std::fs::remove_dir_all(&work);
        r
    };
    let mut model_seconds = 0.0;
    let mut frames = 0;
    let mut source_rate = SAMPLE_RATE;
    let mut raw: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for (i, model) in models.iter().enumerate() {
        let loading = Instant::now();
        let mut separator = match job.engine.build(model) {
            Ok(s) => s,
            Err(e) => return cleanup(Err(e.into())),
        };
        model_seconds += loading.elapsed().as_secs_f64();
        let wanted: Vec<String> = job.stems.clone().unwrap_or_else(|| separator.stems());
        let mut reader = match AudioReader::open(job.source, job.max_seconds) {
            Ok(r) => r,
            Err(e) => return cleanup(Err(JobError::from(SeparateError::from(e)))),
        };
        source_rate = reader.source_rate();
        let mut writers = Vec::new();
        for stem in separator.stems() {
            if wanted.contains(&stem) {
                let path = work.join(format!("{i}-{stem}.f32"));
                let file = std::fs::File::create(&path)
                    .map_err(|e| JobError::internal(format!("{}: {e}", path.display())))?;
                writers.push(Some(std::io::BufWriter::new(file)));
                raw.entry(stem).or_default().push(path);
            } else {
                writers.push(None);
            }
        }
        let mut sink = RawSink { writers };
        let mut share = Share {
            inner: progress.clone(),
            index: i as u64,
            count: models.len() as u64,
        };
        frames = match separator.separate(&mut reader, &mut sink, &mut share) {
            Ok(n) => n,
            Err(e) => return cleanup(Err(e.into())),
        };
        for w in sink.writers.into_iter().flatten() {
            if let Err(e) = w
                .into_inner()
                .map_err(|e| e.to_string())
                .and_then(|f| f.sync_all().map_err(|e| e.to_string()))
            {
                return cleanup(Err(JobError::internal(format!("an ensemble stem: {e}"))));
            }
        }
    }
    let rate = output_rate(encoding, job.sample_rate, source_rate);
    let mut stems = BTreeMap::new();
    for (stem, inputs) in &raw {
        if inputs.len() != models.len() {
            continue; // not a stem of every model
        }
        let path = job.out_dir.join(format!("{stem}.{}", encoding.extension()));
        let mut writer = match StemWriter::create(&path, encoding, rate) {
            Ok(w) => w,
            Err(e) => {
                return cleanup(Err(JobError::internal(format!(
                    "creating {}: {e}",
                    path.display()
                ))));
            }
        };
        let combined = crate::separation::ensemble::combine(algorithm, inputs, frames, &mut |b| {
            writer.write(b)
        })
        .and_then(|()| writer.finish().map(|_| ()));
        if let Err(e) = combined {
            return cleanup(Err(JobError::internal(format!("combining {stem}: {e}"))));
        }
        match stem_entry(&path, job.relative_to) {
            Ok(entry) => stems.insert(stem.clone(), entry),
            Err(e) => return cleanup(Err(e)),
        };
    }
    progress.percent.store(100, Ordering::Relaxed);
    let mut result = summary(Summary {
        model: format!("ensemble:{}", algorithm.name()),
        family: "ensemble".into(),
        stems,
        encoding,
        rate,
        frames,
        source_rate,
        model_seconds,
        seconds: started.elapsed().as_secs_f64() - model_seconds,
    });
    result.models = Some(models.to_vec());
    result.ensemble = Some(algorithm.name().to_string());
    cleanup(Ok(result))
}

/// A written stem as the result lists it: its file (relative to the staging directory), size
/// and SHA-256.
fn stem_entry(path: &Path, relative_to: &Path) -> Result<Stem, JobError> {
    let (bytes, sha256) = file_digest(path)
        .map_err(|e| JobError::internal(format!("reading {}: {e}", path.display())))?;
    let file = path
        .strip_prefix(relative_to)
        .unwrap_or(path)
        .to_string_lossy()
        .to_string();
    Ok(Stem {
        file: Some(file),
        bytes,
        sha256,
        ..Stem::default()
    })
}

/// Size and SHA-256 of a file, streamed.
pub fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((total, hex::encode(hasher.finalize())))
}
