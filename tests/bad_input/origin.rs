//! The loopback HTTP origin the pipeline cases fetch from: audio files, redirects, generated
//! streams of silence, trickling sources, and a webhook receiver. It also works as a forward
//! proxy (requests in absolute form are routed by their path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

use super::fixtures;
use crate::common::e2e::{Received, header_map};

/// What an audio origin serves and has received.
#[derive(Default)]
pub(crate) struct OriginState {
    pub(crate) files: HashMap<String, Arc<Vec<u8>>>,
    /// `/redirect/{name}`: 302 to this location (`None`: a 302 without `Location`).
    pub(crate) redirects: HashMap<String, Option<String>>,
    /// `/stream/{name}`: generated silence.
    pub(crate) streams: HashMap<String, Silence>,
    /// `/trickle/{name}`: a WAV header, then one byte every this many milliseconds.
    pub(crate) trickles: HashMap<String, u64>,
    /// Every file path asked for (`/audio/...`), in order, direct or through the proxy.
    pub(crate) asked: Vec<String>,
    pub(crate) hooks: Vec<Received>,
}

/// Silence generated as it is sent (nothing held in memory).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Silence {
    pub(crate) rate: u32,
    pub(crate) channels: u16,
    pub(crate) seconds: u64,
    /// Send a `Content-Length` (otherwise chunked).
    pub(crate) content_length: bool,
    /// Say 0xFFFFFFFF in the RIFF and data lengths, as a WAV written to a pipe does.
    pub(crate) unknown_length: bool,
}

impl Silence {
    pub(crate) fn data_len(&self) -> u64 {
        self.seconds * u64::from(self.rate) * u64::from(self.channels) * 2
    }

    pub(crate) fn header(&self) -> Vec<u8> {
        let data = match self.unknown_length {
            true => u32::MAX,
            false => u32::try_from(self.data_len()).unwrap(),
        };
        let mut h = b"RIFF".to_vec();
        h.extend_from_slice(&data.saturating_add(36).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        let align = self.channels * 2;
        h.extend(fixtures::fmt_chunk(
            1,
            self.channels,
            self.rate,
            align,
            16,
            &[],
        ));
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        h
    }
}

/// A loopback HTTP server: audio files, redirects, generated streams, and webhooks. It also
/// works as a forward proxy: requests in absolute form are routed by their path.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) base: String,
    pub(crate) port: u16,
    pub(crate) state: Arc<Mutex<OriginState>>,
}

async fn origin_file(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let mut st = st.lock().unwrap();
    st.asked.push(req.path().to_string());
    match st.files.get(name).cloned() {
        None => HttpResponse::NotFound().body("no such file"),
        Some(d) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(d.as_ref().clone()),
    }
}

async fn origin_redirect(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    match st.lock().unwrap().redirects.get(name).cloned() {
        None => HttpResponse::NotFound().finish(),
        Some(None) => HttpResponse::Found().finish(),
        Some(Some(location)) => HttpResponse::Found()
            .insert_header(("location", location))
            .finish(),
    }
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

async fn origin_stream(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(s) = st.lock().unwrap().streams.get(name).copied() else {
        return HttpResponse::NotFound().finish();
    };
    let header = web::Bytes::from(s.header());
    let total = header.len() as u64 + s.data_len();
    let chunks =
        futures_util::stream::unfold((Some(header), s.data_len()), |(head, left)| async move {
            if let Some(h) = head {
                return Some((Ok::<_, std::io::Error>(h), (None, left)));
            }
            if left == 0 {
                return None;
            }
            let n = left.min(ZEROS.len() as u64);
            Some((
                Ok(web::Bytes::from_static(&ZEROS[..n as usize])),
                (None, left - n),
            ))
        });
    let mut resp = HttpResponse::Ok();
    resp.content_type("audio/wav");
    if s.content_length {
        resp.no_chunking(total);
    }
    resp.streaming(chunks)
}

async fn origin_trickle(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(every) = st.lock().unwrap().trickles.get(name).copied() else {
        return HttpResponse::NotFound().finish();
    };
    let header = Silence {
        rate: 44_100,
        channels: 2,
        seconds: 1,
        content_length: false,
        unknown_length: false,
    }
    .header();
    // The header at once, then a zero byte every `every` ms for at most ten minutes.
    let bytes = futures_util::stream::unfold(0u64, move |sent| {
        let header = header.clone();
        async move {
            if sent == 0 {
                return Some((Ok::<_, std::io::Error>(web::Bytes::from(header)), 1));
            }
            if sent > 600_000 / every.max(1) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(every)).await;
            Some((Ok(web::Bytes::from_static(&[0u8])), sent + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("audio/wav")
        .streaming(bytes)
}

async fn origin_hook(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<Arc<Mutex<OriginState>>>,
) -> HttpResponse {
    let headers = header_map(&req);
    st.lock().unwrap().hooks.push(Received {
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        at: Instant::now(),
    });
    HttpResponse::Ok().finish()
}

impl Origin {
    pub(crate) fn start() -> Self {
        let state = Arc::new(Mutex::new(OriginState::default()));
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/audio/{name}", web::get().to(origin_file))
                .route("/redirect/{name}", web::get().to(origin_redirect))
                .route("/stream/{name}", web::get().to(origin_stream))
                .route("/trickle/{name}", web::get().to(origin_trickle))
                .route("/hook", web::post().to(origin_hook))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Self {
            base: format!("http://127.0.0.1:{port}"),
            port,
            state,
        }
    }

    pub(crate) fn hooks(&self) -> Vec<Received> {
        self.state.lock().unwrap().hooks.clone()
    }
}
