//! A song through the whole service: separated, stored and announced, or polled to its
//! stems; failures announced with their code; priorities; a task cancelled before it is
//! processed; stems in FLAC, MP3 and Opus served with ranges; ensembles of two models.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::client::{Auth, no_redirects};
use crate::common::e2e::{Deployment, Peer, WEBHOOK_SECRET, read_wav, test_wav, verify_signature};

/// The centred voice of [`song_wav`] at time `t` (seconds): four harmonics of 220 Hz.
fn song_voice(t: f64) -> f64 {
    (1..5)
        .map(|h| (2.0 * std::f64::consts::PI * 220.0 * f64::from(h) * t).sin() / f64::from(h))
        .sum::<f64>()
        * 0.25
}

/// The accompaniment of [`song_wav`] in channel `c`: two tones of their own on each side,
/// so no frequency is shared between the channels (nothing of it is centred).
fn song_side(c: usize, t: f64) -> f64 {
    let tones: [(f64, f64); 2] = if c == 0 {
        [(331.7, 0.12), (1_851.3, 0.08)]
    } else {
        [(523.9, 0.12), (2_937.1, 0.08)]
    };
    tones
        .iter()
        .map(|(f, a)| a * (2.0 * std::f64::consts::PI * f * t).sin())
        .sum()
}

/// A stereo 16-bit WAV of `seconds` at `rate` whose every sample is known in closed form:
/// [`song_voice`] in both channels plus [`song_side`] in each.
fn song_wav(seconds: f64, rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cur = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
    for i in 0..(seconds * f64::from(rate)) as usize {
        let t = i as f64 / f64::from(rate);
        for c in 0..2 {
            let x = song_voice(t) + song_side(c, t);
            w.write_sample((x * 32767.0).round() as i16).unwrap();
        }
    }
    w.finalize().unwrap();
    cur.into_inner()
}

#[actix_rt::test]
async fn a_submitted_song_is_separated_stored_and_announced() {
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", song_wav(3.0, 48_000));
    let accepted = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url(), "priority": 4}))
        .await;
    let id = accepted["task_id"].as_str().unwrap().to_string();

    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 1, "one webhook");
    let hook = &hooks[0];
    assert!(
        verify_signature(WEBHOOK_SECRET, hook),
        "valid Standard Webhooks signature"
    );
    assert_eq!(hook.headers["webhook-id"], id);
    assert_eq!(hook.body["task_id"], id);
    assert_eq!(hook.body["status"], "succeeded");
    assert_eq!(hook.body["priority"], 4);
    assert_eq!(hook.body["model"], "dsp-centre");
    assert!(hook.body["error"].is_null());
    assert!((hook.body["duration_seconds"].as_f64().unwrap() - 3.0).abs() < 0.01);

    // Download both stems through their signed links.
    let mut stems = Vec::new();
    for stem in ["vocals", "instrumental"] {
        let url = hook.body["stems"][stem]["url"].as_str().unwrap();
        let bytes = client.download(url).await;
        let (spec, frames) = read_wav(&bytes);
        assert_eq!((spec.channels, spec.sample_rate), (2, 44_100));
        assert_eq!(
            frames.len(),
            3 * 44_100,
            "{stem}: the length of the mix at 44.1 kHz"
        );
        stems.push(frames);
        // A tampered link is refused.
        let bad = url.replace("sig=", "sig=00");
        assert_eq!(client.http.get(&bad).send().await.unwrap().status(), 403);
    }
    // Expected audio in closed form, independent of the service's decoder and resampler:
    // the 48 kHz source is band-limited, so at 44.1 kHz it is the same functions sampled at
    // the new rate. The first and last 100 ms are left out (the resampler's filter sees
    // silence beyond the ends).
    let edge = 4_410;
    let inner = edge..3 * 44_100 - edge;
    let t = |i: usize| i as f64 / 44_100.0;
    let (mut mix_err, mut v_sig, mut v_err, mut a_sig, mut a_err) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for i in inner.clone() {
        let (v, a) = (&stems[0][i], &stems[1][i]);
        for c in 0..2 {
            let (voice, side) = (song_voice(t(i)), song_side(c, t(i)));
            let mix = f64::from(v[c]) + f64::from(a[c]);
            mix_err = mix_err.max((mix - voice - side).abs());
            v_sig += voice * voice;
            v_err += (f64::from(v[c]) - voice).powi(2);
            a_sig += side * side;
            a_err += (f64::from(a[c]) - side).powi(2);
        }
    }
    // The two stems together are the mix, resampled: 16-bit rounding of source and stems
    // plus the resampler's passband error.
    assert!(
        mix_err < 5e-4,
        "vocals + instrumental against the mix at 44.1 kHz: worst error {mix_err:.2e}"
    );
    // The centred voice went to the vocals and the one-sided tones to the instrumental.
    let (v_snr, a_snr) = (
        10.0 * (v_sig / v_err).log10(),
        10.0 * (a_sig / a_err).log10(),
    );
    eprintln!("mix worst error {mix_err:.2e}, vocals {v_snr:.1} dB, instrumental {a_snr:.1} dB");
    assert!(v_snr > 40.0, "vocals against the voice: {v_snr:.1} dB");
    assert!(
        a_snr > 35.0,
        "instrumental against the tones: {a_snr:.1} dB"
    );

    let t = client.task(&id).await;
    assert_eq!(t["status"], "succeeded");
    assert_eq!(t["progress"], 100);
    assert!(t["result"]["stems"]["vocals"]["url"].is_string());
    assert_eq!(t["result"]["webhook"]["state"], "delivered");
    assert_eq!(t["webhook_deliveries"].as_array().unwrap().len(), 1);
    assert!(
        !dep.path("staging").join(&id).exists(),
        "staging cleaned after upload"
    );
}

#[actix_rt::test]
async fn failures_are_announced_with_their_code() {
    let peer = Peer::start();
    let dep = Deployment::new(&[("MAX_ATTEMPTS", "2")]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let missing = format!("{}/audio/missing.wav", peer.base);
    let corrupt = peer.put(
        "corrupt.wav",
        b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage".to_vec(),
    );
    let text = peer.put(
        "notes.txt",
        b"this is not audio at all, just text".repeat(100),
    );
    let mut ids = Vec::new();
    for url in [&missing, &corrupt, &text] {
        let a = client
            .submit(&json!({"audio": url, "hook_url": peer.hook_url()}))
            .await;
        ids.push(a["task_id"].as_str().unwrap().to_string());
    }
    let hooks = peer.wait_hooks(3, Duration::from_secs(60)).await;
    assert_eq!(hooks.len(), 3);
    for (id, code) in ids
        .iter()
        .zip(["audio_http_status", "audio_corrupt", "audio_unsupported"])
    {
        let h = hooks
            .iter()
            .find(|h| h.body["task_id"] == id.as_str())
            .expect("a webhook per task");
        assert!(verify_signature(WEBHOOK_SECRET, h));
        assert_eq!(h.body["status"], "failed");
        assert_eq!(h.body["error"]["code"], code, "{}", h.body);
        assert_eq!(h.body["model"], "dsp-centre", "the webhook names the model");
        let t = client.task(id).await;
        assert_eq!(t["status"], "failed");
        assert_eq!(t["error"]["code"], code);
    }
}

#[actix_rt::test]
async fn priorities_are_honoured_end_to_end() {
    let peer = Peer::start();
    let dep = Deployment::new(&[
        ("PROCESSOR_CONCURRENCY", "1"),
        ("UPLOADER_CONCURRENCY", "1"),
    ]);
    let _api = dep.spawn("api", "api");
    let client = dep.client();
    let audio = peer.put("short.wav", test_wav(0.3, 44_100));
    let mut expected = Vec::new();
    for p in [1, 3, 5, 1, 3, 5] {
        let a = client
            .submit(&json!({"audio": audio, "hook_url": peer.hook_url(), "priority": p}))
            .await;
        expected.push((p, a["task_id"].as_str().unwrap().to_string()));
    }
    expected.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    let _workers = dep.spawn("processor,uploader", "workers");
    let hooks = peer.wait_hooks(6, Duration::from_secs(60)).await;
    let got: Vec<(u8, String)> = hooks
        .iter()
        .map(|h| {
            (
                h.body["priority"].as_u64().unwrap() as u8,
                h.body["task_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected, "5, 3, 1 and FIFO within each");
}

#[actix_rt::test]
async fn cancel_before_processing_means_no_work_and_no_webhook() {
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _api = dep.spawn("api", "api");
    let client = dep.client();
    let audio = peer.put("c.wav", test_wav(0.5, 44_100));
    let a = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let keep = client
        .submit(&json!({"audio": audio, "hook_url": peer.hook_url()}))
        .await;
    let id = a["task_id"].as_str().unwrap();
    let resp = client.delete(&format!("/tasks/{id}")).await;
    assert_eq!(resp.status(), 202);
    let _workers = dep.spawn("processor,uploader", "workers");
    let hooks = peer.wait_hooks(1, Duration::from_secs(60)).await;
    dep.redis.settled(Duration::from_secs(30)).await;
    let hooks_after = peer.hooks();
    assert_eq!(hooks_after.len(), 1, "only the other task is announced");
    assert_eq!(hooks[0].body["task_id"], keep["task_id"]);
    assert_eq!(client.task(id).await["status"], "cancelled");
}

/// Polling is first-class: a task without `hook_url` is separated, stored and finished with
/// no webhook; its links are on the task, and `GET /tasks/{id}/stems/{name}` redirects to a
/// freshly signed link to the same bytes.
#[actix_rt::test]
async fn a_task_without_a_webhook_is_polled_to_its_stems_and_links_are_refreshed() {
    use sha2::Digest;
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client().with_http(no_redirects());
    let audio = peer.put("song.wav", test_wav(2.0, 44_100));
    let accepted = client.submit(&json!({"audio": audio})).await;
    let id = accepted["task_id"].as_str().unwrap().to_string();
    let t = client
        .poll_task(&id, Duration::from_secs(60), |t| t["status"] == "succeeded")
        .await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert!(t["request"]["hook_url"].is_null(), "{t}");
    assert_eq!(t["result"]["webhook"]["state"], "none");
    assert_eq!(t["webhook_deliveries"], json!([]));
    for stem in ["vocals", "instrumental"] {
        let info = &t["result"]["stems"][stem];
        let bytes = client
            .http
            .get(info["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(read_wav(&bytes).1.len(), 2 * 44_100, "{stem}");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            info["sha256"].as_str().unwrap()
        );
        let fresh = client.get(&format!("/tasks/{id}/stems/{stem}")).await;
        assert_eq!(fresh.status(), 302, "{stem}");
        let location = fresh.headers()["location"].to_str().unwrap().to_string();
        let body: Value = fresh.json().await.unwrap();
        assert_eq!(body["url"], location.as_str());
        let again = client.http.get(&location).send().await.unwrap();
        assert_eq!(again.status(), 200);
        assert_eq!(again.bytes().await.unwrap(), bytes, "{stem}: the same file");
    }
    let r = client.get(&format!("/tasks/{id}/stems/drums")).await;
    assert_eq!(r.status(), 404);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["error"]["code"], "stem_not_found");
    let r = client
        .get("/tasks/0190a2b4-0000-7000-8000-000000000000/stems/vocals")
        .await;
    assert_eq!(r.status(), 404);
    let anonymous = client
        .with_auth(Auth::None)
        .get(&format!("/tasks/{id}/stems/vocals"))
        .await;
    assert_eq!(anonymous.status(), 401);
    assert!(peer.hooks().is_empty(), "no webhook was sent");
}

/// FLAC at 48 kHz, MP3 at 128 kbps and Opus at 96 kbps through the whole service: the
/// stems carry their format's extension, and the download route serves them with their
/// content type, `Range`, `ETag` (a conditional request gets 304) and `HEAD`; decoded back
/// they have the song's length at their rate.
#[actix_rt::test]
async fn stems_in_flac_mp3_and_opus_are_stored_and_served_with_ranges() {
    let peer = Peer::start();
    let dep = Deployment::new(&[]);
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(2.0, 44_100));
    for (format, extra, ext, content_type, rate) in [
        (
            "flac",
            json!({"sample_rate": 48000}),
            "flac",
            "audio/flac",
            48_000u32,
        ),
        ("mp3", json!({"bitrate": 128}), "mp3", "audio/mpeg", 44_100),
        (
            "opus",
            json!({"bitrate": 96}),
            "opus",
            "audio/ogg; codecs=opus",
            48_000,
        ),
    ] {
        let mut body = json!({"audio": audio, "output_format": format, "stems": ["vocals"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let accepted = client.submit(&body).await;
        let id = accepted["task_id"].as_str().unwrap().to_string();
        let t = client
            .poll_task(&id, Duration::from_secs(60), |t| t["status"] == "succeeded")
            .await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["result"]["sample_rate"], rate, "{t}");
        let url = t["result"]["stems"]["vocals"]["url"].as_str().unwrap();
        assert!(url.contains(&format!("/vocals.{ext}?")), "{url}");
        let full = client.http.get(url).send().await.unwrap();
        assert_eq!(full.status(), 200);
        assert_eq!(full.headers()["content-type"], content_type);
        assert!(full.headers()["accept-ranges"] == "bytes");
        let etag = full.headers()["etag"].to_str().unwrap().to_string();
        let bytes = full.bytes().await.unwrap();
        // Range: the middle 100 bytes.
        let part = client
            .http
            .get(url)
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap(), bytes.slice(100..200));
        let cached = client
            .http
            .get(url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), 304);
        let head = client.http.head(url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            bytes.len().to_string()
        );
        assert!(head.bytes().await.unwrap().is_empty());
        // Decoded back at its own rate: the song's length (MP3: within a frame; Opus: exact
        // through its pre-skip and end trimming).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("vocals.{ext}"));
        std::fs::write(&file, &bytes).unwrap();
        let mut reader = uvr::audio::AudioReader::open(&file, 0).unwrap();
        assert_eq!(reader.source_rate(), rate, "{format}");
        let mut frames = 0;
        while let Some(block) = reader.read(8192).unwrap() {
            frames += block.len();
        }
        assert!(
            frames.abs_diff(2 * 44_100) <= 1152,
            "{format}: {frames} frames"
        );
    }
}

/// Ensembles through the whole service: `dsp-centre` and a small MDX-Net model, combined by
/// each algorithm. Every stem of an ensemble task is exactly the combination (the same code
/// the numpy reference checks, `src/separation/ensemble.rs`) of what the two models give
/// alone, in 32-bit float, so each model ran once on the same input.
#[actix_rt::test]
async fn an_ensemble_is_the_combination_of_its_models_outputs() {
    use uvr::separation::ensemble::{Algorithm, combine};
    let peer = Peer::start();
    let dep = Deployment::new(&[("SEPARATOR_DEVICE", "cpu")]);
    let models = dep.path("models");
    std::fs::create_dir_all(&models).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    for ext in ["onnx", "json"] {
        std::fs::copy(
            fixtures.join(format!("small5.{ext}")),
            models.join(format!("small5.{ext}")),
        )
        .unwrap();
    }
    let _svc = dep.spawn("api,processor,uploader", "all");
    let client = dep.client();
    let audio = peer.put("song.wav", test_wav(1.5, 44_100));
    let run = |body: Value| {
        let client = client.clone();
        async move {
            let accepted = client.submit(&body).await;
            let id = accepted["task_id"].as_str().unwrap().to_string();
            let t = client
                .poll_task(&id, Duration::from_secs(120), |t| {
                    t["status"] == "succeeded" || t["status"] == "failed"
                })
                .await;
            assert_eq!(t["status"], "succeeded", "{t}");
            let mut stems = std::collections::BTreeMap::new();
            for stem in ["vocals", "instrumental"] {
                let url = t["result"]["stems"][stem]["url"].as_str().unwrap();
                let bytes = client.download(url).await;
                let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
                let s: Vec<f32> = r.samples::<f32>().map(Result::unwrap).collect();
                stems.insert(stem, s);
            }
            (t, stems)
        }
    };
    let alone: Vec<_> = [
        json!({"audio": audio, "model": "dsp-centre", "output_format": "wav32f"}),
        json!({"audio": audio, "model": "small5", "output_format": "wav32f"}),
    ]
    .into_iter()
    .map(run)
    .collect();
    let mut outputs = Vec::new();
    for f in alone {
        outputs.push(f.await.1);
    }
    let dir = tempfile::tempdir().unwrap();
    for algorithm in [Algorithm::Average, Algorithm::MaxSpec, Algorithm::MinSpec] {
        let (t, got) = run(json!({
            "audio": audio,
            "models": ["dsp-centre", "small5"],
            "ensemble": algorithm.name(),
            "output_format": "wav32f",
        }))
        .await;
        assert_eq!(t["result"]["ensemble"], algorithm.name(), "{t}");
        assert_eq!(t["result"]["models"], json!(["dsp-centre", "small5"]));
        assert_eq!(t["request"]["ensemble"], algorithm.name());
        for stem in ["vocals", "instrumental"] {
            let mut inputs = Vec::new();
            for (i, out) in outputs.iter().enumerate() {
                let p = dir.path().join(format!("{i}-{stem}.f32"));
                let bytes: Vec<u8> = out[stem].iter().flat_map(|s| s.to_le_bytes()).collect();
                std::fs::write(&p, bytes).unwrap();
                inputs.push(p);
            }
            let frames = (outputs[0][stem].len() / 2) as u64;
            let mut want: Vec<f32> = Vec::new();
            combine(algorithm, &inputs, frames, &mut |b| {
                want.extend(b.iter().flatten());
                Ok(())
            })
            .unwrap();
            assert_eq!(got[stem].len(), want.len(), "{algorithm:?} {stem}");
            let max = got[stem]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max < 1e-6, "{algorithm:?} {stem}: max difference {max:e}");
        }
    }
    // The combination differs from either model alone.
    let (_, avg) = run(json!({
        "audio": audio, "models": ["dsp-centre", "small5"], "ensemble": "average",
        "output_format": "wav32f",
    }))
    .await;
    assert!(
        avg["vocals"]
            .iter()
            .zip(&outputs[0]["vocals"])
            .any(|(a, b)| (a - b).abs() > 1e-4)
    );
}
