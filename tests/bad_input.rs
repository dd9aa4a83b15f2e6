//! Bad input, table-driven: every malformed request and every damaged or hostile audio source
//! gets a stable error code, the service stays up, and nothing is left half-written in Redis or
//! in storage.
//!
//! - A. The API, in process ([`spawn_app`]): bodies, types, missing and extra fields, URLs with
//!   unicode tricks, private, loopback, link-local and metadata targets (literal, spelled
//!   otherwise, or names that resolve to them through /etc/hosts), schemes, priorities. After
//!   every rejected case nothing is stored in Redis and `/health` still answers.
//! - B. The pipeline, through the real `uvr` binary with the `dsp-centre` separator: every
//!   format the decoder handles (WAV PCM 8/16/24/32f, A-law, IMA ADPCM, FLAC, MP3, Ogg Vorbis,
//!   AAC in ADTS), intact, truncated at several points and corrupted; empty, one-sample and
//!   lying headers; non-audio; an hour of silence against the size and duration limits;
//!   extreme sample rates and channel counts; redirect chains; redirects into private space.
//!   Every task ends in the expected state with the expected code, exactly one signed webhook,
//!   nothing left in the staging directory and, when it failed, no stems in storage.
//!
//! The fixtures are generated here, without external tools: WAV through `hound` or by hand, and
//! minimal but valid FLAC (verbatim subframes), MP3 (silent MPEG-1 Layer III frames, with and
//! without a Xing header), AAC (silent ADTS frames) and Ogg Vorbis (a one-codebook setup with
//! unused floors) streams.
//!
//! Redirects into private space need a configuration where the audio origin is allowed but the
//! redirect target is not. The address policy has no allow-list (only
//! `ALLOW_PRIVATE_NETWORKS`), so that deployment keeps the policy on and reaches the loopback
//! origin through a forward proxy (`OUTBOUND_PROXY`; proxies of the environment are ignored,
//! which `pipeline_bounds_slow_sources_and_large_outputs_and_ignores_environment_proxies`
//! checks): the audio URLs name a host under `.invalid`, which resolves nowhere, so nothing
//! leaves the machine, and each redirect target is checked by the policy before any request.
//! (Through a proxy the connect-time DNS check does not apply, since the proxy resolves names:
//! that deployment tests the checks of redirect targets, not DNS. The DNS check is tested
//! without a proxy in `src/audio/fetch.rs` and `tests/pipeline/sources.rs`.)
//!
//! Layout: this file is the crate root; its modules live in `tests/bad_input/` (declared with
//! `#[path]`, since a crate root's `mod x;` would look for `tests/x.rs`), one surface each:
//!
//! - `fixtures`: the hand-made audio encoders (WAV, FLAC, MP3, AAC, Ogg Vorbis, Opus) and
//!   damage (truncate, corrupt_middle) and non-audio (noise, HTML, PNG, a lone ID3 tag);
//! - `api_cases`: the API case table and its runner, `run_api_table`;
//! - `api_bodies`: the `api_*` tests of request bodies, types, fields and headers;
//! - `api_urls`: the `api_*` test of hostile URLs, and the names resolving to loopback here;
//! - `pipeline_cases`: the pipeline case table and its runner, `run_pipeline_table`, which
//!   serves each case from the shared loopback origin (`Peer` in `tests/common/origin.rs`,
//!   also a forward proxy);
//! - `pipeline_files`: the `pipeline_*` test of damaged and non-audio files;
//! - `pipeline_transport`: the `pipeline_*` tests of limits, redirects, slow sources, large
//!   outputs, environment proxies and redirects into private space.
//!
//! [`spawn_app`]: common::spawn_app

mod common;

#[path = "bad_input/api_bodies.rs"]
mod api_bodies;
#[path = "bad_input/api_cases.rs"]
mod api_cases;
#[path = "bad_input/api_urls.rs"]
mod api_urls;
#[path = "bad_input/fixtures.rs"]
mod fixtures;
#[path = "bad_input/pipeline_cases.rs"]
mod pipeline_cases;
#[path = "bad_input/pipeline_files.rs"]
mod pipeline_files;
#[path = "bad_input/pipeline_transport.rs"]
mod pipeline_transport;
