//! A Roformer model's YAML configuration, in the layout of Music-Source-Separation-Training
//! (`audio:`, `model:`, `training:`, `inference:`), as published beside the checkpoints.
//!
//! Tuples are written with Python's `!!python/tuple` tag; the tag is dropped and the value
//! read as a list. Keys this engine does not use (losses, optimiser, augmentation) are
//! ignored; switches that change the network and that it does not implement are refused by
//! name.

use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;

use super::RoformerError;
use crate::separation::{complement, stem_name};

/// Band-split layout of the two variants.
#[derive(Debug, Clone, PartialEq)]
pub enum Variant {
    /// BS-Roformer: contiguous bands of `freqs_per_bands` STFT bins.
    BandSplit {
        /// Bins per band, summing to `n_fft / 2 + 1`.
        freqs_per_bands: Vec<usize>,
    },
    /// Mel-Band Roformer: `num_bands` overlapping bands from a Slaney mel filterbank.
    MelBand {
        /// Number of mel bands.
        num_bands: usize,
        /// Sample rate the filterbank is laid out for.
        sample_rate: u32,
    },
}

impl Variant {
    /// "bs-roformer" or "mel-band-roformer".
    pub fn family(&self) -> &'static str {
        match self {
            Variant::BandSplit { .. } => "bs-roformer",
            Variant::MelBand { .. } => "mel-band-roformer",
        }
    }
}

/// Everything the engine needs from a config, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RoformerConfig {
    /// The band layout.
    pub variant: Variant,
    /// Feature width of the transformer.
    pub dim: usize,
    /// Number of (time, frequency) transformer pairs.
    pub depth: usize,
    /// Stereo input (otherwise mono).
    pub stereo: bool,
    /// Stems the network predicts.
    pub num_stems: usize,
    /// Layers in each time transformer.
    pub time_transformer_depth: usize,
    /// Layers in each frequency transformer.
    pub freq_transformer_depth: usize,
    /// Layers in the linear-attention transformer before each pair (0 for none).
    pub linear_transformer_depth: usize,
    /// Width of one attention head.
    pub dim_head: usize,
    /// Attention heads.
    pub heads: usize,
    /// STFT size.
    pub n_fft: usize,
    /// STFT hop.
    pub hop: usize,
    /// Whether the STFT is scaled by `1/sqrt(n_fft)`.
    pub stft_normalized: bool,
    /// Whether the DC bin of the masked spectrogram is zeroed.
    pub zero_dc: bool,
    /// Depth of the per-band mask MLP.
    pub mask_estimator_depth: usize,
    /// Hidden width of the mask MLP, as a multiple of `dim`.
    pub mlp_expansion_factor: usize,
    /// Whether each pair's input adds the outputs of all earlier pairs.
    pub skip_connection: bool,
    /// Whether BS-Roformer's final RMSNorm is left out (python-audio-separator's extension).
    pub skip_final_norm: bool,
    /// Samples per demix chunk.
    pub chunk_size: usize,
    /// Chunks overlapping each sample (the step is `chunk_size / num_overlap`).
    pub num_overlap: usize,
    /// Chunks per forward pass.
    pub batch_size: usize,
    /// Sample rate the model was trained at.
    pub sample_rate: u32,
    /// What the network's stems are, in output order.
    pub instruments: Vec<String>,
    /// The one instrument a single-target model predicts.
    pub target_instrument: Option<String>,
}

/// MSST's default band layout for BS-Roformer (n_fft 2048).
pub const DEFAULT_FREQS_PER_BANDS: &[usize] = &[
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 12, 12, 12, 12, 12, 12, 12, 12, 24, 24, 24, 24, 24, 24, 24, 24, 48, 48, 48, 48, 48,
    48, 48, 48, 128, 129,
];

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    audio: Audio,
    model: Model,
    #[serde(default)]
    training: Training,
    #[serde(default)]
    inference: Inference,
}

#[derive(Debug, Default, Deserialize)]
struct Audio {
    chunk_size: Option<usize>,
    num_channels: Option<usize>,
    sample_rate: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Model {
    dim: usize,
    depth: usize,
    #[serde(default)]
    stereo: bool,
    #[serde(default = "one")]
    num_stems: usize,
    #[serde(default = "two")]
    time_transformer_depth: usize,
    #[serde(default = "two")]
    freq_transformer_depth: usize,
    #[serde(default)]
    linear_transformer_depth: usize,
    freqs_per_bands: Option<Vec<usize>>,
    num_bands: Option<usize>,
    sample_rate: Option<u32>,
    #[serde(default = "dim_head")]
    dim_head: usize,
    #[serde(default = "heads")]
    heads: usize,
    dim_freqs_in: Option<usize>,
    #[serde(default = "n_fft")]
    stft_n_fft: usize,
    #[serde(default = "hop")]
    stft_hop_length: usize,
    stft_win_length: Option<usize>,
    #[serde(default)]
    stft_normalized: bool,
    #[serde(default = "yes")]
    zero_dc: bool,
    mask_estimator_depth: Option<usize>,
    #[serde(default = "four")]
    mlp_expansion_factor: usize,
    #[serde(default)]
    skip_connection: bool,
    #[serde(default)]
    use_pope: bool,
    #[serde(default)]
    skip_final_norm: bool,
    #[serde(default)]
    match_input_audio_length: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Training {
    #[serde(default)]
    instruments: Vec<String>,
    target_instrument: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Inference {
    batch_size: Option<usize>,
    num_overlap: Option<usize>,
    chunk_size: Option<usize>,
    #[serde(default)]
    normalize: bool,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn yes() -> bool {
    true
}
fn dim_head() -> usize {
    64
}
fn heads() -> usize {
    8
}
fn n_fft() -> usize {
    2048
}
fn hop() -> usize {
    512
}

/// Drops YAML tags (`!!python/tuple [..]` becomes `[..]`) everywhere in `v`.
fn untag(v: Value) -> Value {
    match v {
        Value::Tagged(t) => untag(t.value),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(untag).collect()),
        Value::Mapping(m) => Value::Mapping(m.into_iter().map(|(k, v)| (k, untag(v))).collect()),
        other => other,
    }
}

impl RoformerConfig {
    /// Reads and checks the config at `path`.
    pub fn read(path: &Path) -> Result<Self, RoformerError> {
        let text = std::fs::read_to_string(path).map_err(|source| RoformerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            RoformerError::Config(m) => RoformerError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and checks a config.
    pub fn parse(text: &str) -> Result<Self, RoformerError> {
        let value: Value =
            serde_norway::from_str(text).map_err(|e| RoformerError::Config(e.to_string()))?;
        let file: File = serde_norway::from_value(untag(value))
            .map_err(|e| RoformerError::Config(e.to_string()))?;
        Self::check(file)
    }

    fn check(f: File) -> Result<Self, RoformerError> {
        let m = f.model;
        let bad = |m: String| Err(RoformerError::Config(m));
        if m.use_pope {
            return Err(RoformerError::Unsupported(
                "model.use_pope (PoPE positional embeddings)".into(),
            ));
        }
        if f.inference.normalize {
            return Err(RoformerError::Unsupported(
                "inference.normalize (whole-song normalisation before demixing)".into(),
            ));
        }
        if let Some(w) = m.stft_win_length
            && w != m.stft_n_fft
        {
            return Err(RoformerError::Unsupported(format!(
                "model.stft_win_length {w} different from stft_n_fft {}",
                m.stft_n_fft
            )));
        }
        // `match_input_audio_length` needs nothing: chunks are whole hops, so the iSTFT
        // length is the chunk length either way.
        let _ = m.match_input_audio_length;
        let freqs = m.stft_n_fft / 2 + 1;
        if m.stft_n_fft < 4 || m.stft_hop_length == 0 || m.stft_hop_length > m.stft_n_fft {
            return bad(format!(
                "model.stft_n_fft {} / stft_hop_length {} are not a usable STFT",
                m.stft_n_fft, m.stft_hop_length
            ));
        }
        if let Some(d) = m.dim_freqs_in
            && d != freqs
        {
            return bad(format!(
                "model.dim_freqs_in {d} does not match stft_n_fft {} ({freqs} bins)",
                m.stft_n_fft
            ));
        }
        let variant = match (m.freqs_per_bands, m.num_bands) {
            (Some(_), Some(_)) => {
                return bad("model has both freqs_per_bands and num_bands".into());
            }
            (None, Some(num_bands)) => {
                if num_bands < 2 {
                    return bad(format!("model.num_bands {num_bands} must be at least 2"));
                }
                Variant::MelBand {
                    num_bands,
                    sample_rate: m.sample_rate.or(f.audio.sample_rate).unwrap_or(44_100),
                }
            }
            (bands, None) => {
                let freqs_per_bands = bands.unwrap_or_else(|| DEFAULT_FREQS_PER_BANDS.to_vec());
                let sum: usize = freqs_per_bands.iter().sum();
                if freqs_per_bands.len() < 2 || sum != freqs || freqs_per_bands.contains(&0) {
                    return bad(format!(
                        "model.freqs_per_bands ({} bands, {sum} bins) must be at least two non-empty bands covering all {freqs} bins of stft_n_fft {}",
                        freqs_per_bands.len(),
                        m.stft_n_fft
                    ));
                }
                Variant::BandSplit { freqs_per_bands }
            }
        };
        let mask_estimator_depth = m.mask_estimator_depth.unwrap_or(match variant {
            Variant::BandSplit { .. } => 2,
            Variant::MelBand { .. } => 1,
        });
        for (name, v) in [
            ("dim", m.dim),
            ("depth", m.depth),
            ("num_stems", m.num_stems),
            ("dim_head", m.dim_head),
            ("heads", m.heads),
            ("mask_estimator_depth", mask_estimator_depth),
            ("mlp_expansion_factor", m.mlp_expansion_factor),
        ] {
            if v == 0 {
                return bad(format!("model.{name} must be positive"));
            }
        }
        if m.dim_head % 2 != 0 {
            return bad(format!(
                "model.dim_head {} must be even (rotary embedding)",
                m.dim_head
            ));
        }
        if m.time_transformer_depth == 0 || m.freq_transformer_depth == 0 {
            return bad(
                "model.time_transformer_depth and freq_transformer_depth must be positive".into(),
            );
        }
        if let Some(c) = f.audio.num_channels
            && c != if m.stereo { 2 } else { 1 }
        {
            return bad(format!(
                "audio.num_channels {c} disagrees with model.stereo {}",
                m.stereo
            ));
        }
        let chunk_size = f
            .inference
            .chunk_size
            .or(f.audio.chunk_size)
            .ok_or_else(|| RoformerError::Config("audio.chunk_size is missing".into()))?;
        let num_overlap = f.inference.num_overlap.unwrap_or(4);
        if num_overlap == 0 || chunk_size < num_overlap || chunk_size < 10 {
            return bad(format!(
                "chunk_size {chunk_size} with num_overlap {num_overlap} is not a usable demix"
            ));
        }
        if chunk_size % m.stft_hop_length != 0 {
            return Err(RoformerError::Unsupported(format!(
                "chunk_size {chunk_size} that is not a whole number of hops ({})",
                m.stft_hop_length
            )));
        }
        let instruments = f.training.instruments;
        let target = f.training.target_instrument.filter(|t| !t.is_empty());
        let outputs = match &target {
            Some(_) => 1,
            None => instruments.len(),
        };
        if outputs != m.num_stems {
            return bad(format!(
                "model.num_stems {} but the config names {outputs} output(s) (training.target_instrument / instruments)",
                m.num_stems
            ));
        }
        Ok(Self {
            variant,
            dim: m.dim,
            depth: m.depth,
            stereo: m.stereo,
            num_stems: m.num_stems,
            time_transformer_depth: m.time_transformer_depth,
            freq_transformer_depth: m.freq_transformer_depth,
            linear_transformer_depth: m.linear_transformer_depth,
            dim_head: m.dim_head,
            heads: m.heads,
            n_fft: m.stft_n_fft,
            hop: m.stft_hop_length,
            stft_normalized: m.stft_normalized,
            zero_dc: m.zero_dc,
            mask_estimator_depth,
            mlp_expansion_factor: m.mlp_expansion_factor,
            skip_connection: m.skip_connection,
            skip_final_norm: m.skip_final_norm,
            chunk_size,
            num_overlap,
            batch_size: f.inference.batch_size.unwrap_or(1).max(1),
            sample_rate: f.audio.sample_rate.unwrap_or(44_100),
            instruments,
            target_instrument: target,
        })
    }

    /// Audio channels (2 for stereo models).
    pub fn channels(&self) -> usize {
        if self.stereo { 2 } else { 1 }
    }

    /// STFT bins (`n_fft / 2 + 1`).
    pub fn freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// The network's outputs, in order: the target, or every instrument.
    pub fn outputs(&self) -> Vec<String> {
        match &self.target_instrument {
            Some(t) => vec![t.clone()],
            None => self.instruments.clone(),
        }
    }

    /// The stems a separator gives: the network's outputs, plus, for a single-target model,
    /// the rest of the mix (`instrumental` for a vocal model, `vocals` for an instrumental
    /// one, `no_<target>` otherwise).
    pub fn stems(&self) -> Vec<String> {
        let mut stems: Vec<String> = self.outputs().iter().map(|s| stem_name(s)).collect();
        if let Some(t) = &self.target_instrument {
            stems.push(complement(&stem_name(t)));
        }
        stems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIPERX_1297: &str = include_str!("../../tests/fixtures/roformer/viperx_1297.yaml");
    const MEL_3005: &str = include_str!("../../tests/fixtures/roformer/mel_3005.yaml");

    #[test]
    fn published_configs_parse() {
        let c = RoformerConfig::parse(VIPERX_1297).unwrap();
        assert_eq!(c.variant.family(), "bs-roformer");
        assert_eq!((c.dim, c.depth, c.heads, c.dim_head), (512, 12, 8, 64));
        assert_eq!((c.n_fft, c.hop, c.chunk_size), (2048, 441, 352_800));
        assert_eq!((c.num_overlap, c.batch_size), (2, 4));
        assert_eq!(c.stems(), vec!["vocals", "instrumental"]);
        let Variant::BandSplit { freqs_per_bands } = &c.variant else {
            panic!("BS config read as {:?}", c.variant)
        };
        assert_eq!(freqs_per_bands.len(), 62);
        let m = RoformerConfig::parse(MEL_3005).unwrap();
        assert_eq!(
            m.variant,
            Variant::MelBand {
                num_bands: 60,
                sample_rate: 44_100
            }
        );
        assert_eq!(m.dim, 384);
    }

    #[test]
    fn unsupported_and_inconsistent_configs_are_refused_by_name() {
        let pope = VIPERX_1297.replace("  dim: 512\n", "  dim: 512\n  use_pope: true\n");
        let e = RoformerConfig::parse(&pope).unwrap_err();
        assert!(matches!(e, RoformerError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("use_pope"), "{e}");
        let stems = VIPERX_1297.replace("num_stems: 1", "num_stems: 2");
        let e = RoformerConfig::parse(&stems).unwrap_err();
        assert!(e.to_string().contains("num_stems"), "{e}");
        let bands = VIPERX_1297.replace("    - 129\n", "    - 128\n");
        let e = RoformerConfig::parse(&bands).unwrap_err();
        assert!(e.to_string().contains("freqs_per_bands"), "{e}");
        let e = RoformerConfig::parse("model: [1, 2]").unwrap_err();
        assert!(matches!(e, RoformerError::Config(_)), "{e}");
    }

    #[test]
    fn single_target_models_name_the_rest_of_the_mix() {
        for (target, stems) in [
            ("vocals", ["vocals", "instrumental"]),
            ("Instrumental", ["instrumental", "vocals"]),
            ("Lead Vocals", ["lead_vocals", "no_lead_vocals"]),
        ] {
            let yaml = VIPERX_1297.replace(
                "target_instrument: vocals",
                &format!("target_instrument: {target}"),
            );
            assert_eq!(RoformerConfig::parse(&yaml).unwrap().stems(), stems);
        }
    }
}
