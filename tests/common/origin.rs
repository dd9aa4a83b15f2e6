//! The loopback HTTP origin the end-to-end suites fetch audio from and send webhooks to:
//! files (optionally dripped), redirects, generated streams of silence, trickling sources,
//! and a webhook receiver that answers by plan. It also works as a forward proxy: requests
//! in absolute form are routed by their path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

/// A webhook as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub raw: Vec<u8>,
    pub at: Instant,
}

/// What the peer serves and has received.
#[derive(Default)]
pub struct PeerState {
    /// `/audio/{name}`: these bytes (404 for a name not here).
    pub files: HashMap<String, web::Bytes>,
    /// Per file: bytes per second to drip at (slow downloads).
    pub drip: HashMap<String, usize>,
    /// `/redirect/{name}`: 302 to this location (`None`: a 302 without `Location`).
    pub redirects: HashMap<String, Option<String>>,
    /// `/stream/{name}`: generated silence.
    pub streams: HashMap<String, Silence>,
    /// `/trickle/{name}`: a WAV header, then one byte every this many milliseconds.
    pub trickles: HashMap<String, u64>,
    pub hooks: Vec<Received>,
    /// Statuses to answer webhooks with, in order; 200 once exhausted.
    pub hook_statuses: Vec<u16>,
    /// Every audio request (`/audio/...`, direct or through the proxy), by file name, in
    /// arrival order.
    pub audio_requests: Vec<String>,
}

/// Silence generated as it is sent (nothing held in memory): a 16-bit PCM WAV.
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    pub rate: u32,
    pub channels: u16,
    pub seconds: u64,
    /// Send a `Content-Length` (otherwise chunked).
    pub content_length: bool,
    /// Say 0xFFFFFFFF in the RIFF and data lengths, as a WAV written to a pipe does.
    pub unknown_length: bool,
}

impl Silence {
    /// Bytes of sample data.
    pub fn data_len(&self) -> u64 {
        self.seconds * u64::from(self.rate) * u64::from(self.channels) * 2
    }

    /// The 44-byte RIFF header.
    pub fn header(&self) -> Vec<u8> {
        let data = match self.unknown_length {
            true => u32::MAX,
            false => u32::try_from(self.data_len()).unwrap(),
        };
        let align = self.channels * 2;
        let mut h = b"RIFF".to_vec();
        h.extend_from_slice(&data.saturating_add(36).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&self.channels.to_le_bytes());
        h.extend_from_slice(&self.rate.to_le_bytes());
        h.extend_from_slice(&(self.rate * u32::from(align)).to_le_bytes());
        h.extend_from_slice(&align.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        h
    }
}

/// The loopback origin: audio files, redirects, generated streams, and webhooks.
#[derive(Clone)]
pub struct Peer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub port: u16,
    pub state: Arc<Mutex<PeerState>>,
}

type State = web::Data<Arc<Mutex<PeerState>>>;

fn name(req: &HttpRequest) -> String {
    req.match_info().get("name").unwrap_or_default().to_string()
}

async fn serve_file(req: HttpRequest, st: State) -> HttpResponse {
    let name = name(&req);
    let (data, drip) = {
        let mut s = st.lock().unwrap();
        s.audio_requests.push(name.clone());
        (s.files.get(&name).cloned(), s.drip.get(&name).copied())
    };
    let Some(data) = data else {
        return HttpResponse::NotFound().body("no such file");
    };
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/octet-stream");
    let Some(rate) = drip else {
        return resp.body(data);
    };
    let step = rate.max(1) / 10 + 1;
    let chunks: Vec<web::Bytes> = (0..data.len())
        .step_by(step)
        .map(|at| data.slice(at..(at + step).min(data.len())))
        .collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
        let c = it.next()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(c), it))
    });
    resp.streaming(stream)
}

async fn serve_redirect(req: HttpRequest, st: State) -> HttpResponse {
    match st.lock().unwrap().redirects.get(&name(&req)).cloned() {
        None => HttpResponse::NotFound().finish(),
        Some(None) => HttpResponse::Found().finish(),
        Some(Some(location)) => HttpResponse::Found()
            .insert_header(("location", location))
            .finish(),
    }
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

async fn serve_stream(req: HttpRequest, st: State) -> HttpResponse {
    let Some(s) = st.lock().unwrap().streams.get(&name(&req)).copied() else {
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

async fn serve_trickle(req: HttpRequest, st: State) -> HttpResponse {
    let Some(every) = st.lock().unwrap().trickles.get(&name(&req)).copied() else {
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

/// A request's headers by name, values lossily as text.
pub fn header_map(req: &HttpRequest) -> HashMap<String, String> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Verifies a Standard Webhooks signature.
pub fn verify_signature(secret: &str, r: &Received) -> bool {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let id = &r.headers["webhook-id"];
    let ts = &r.headers["webhook-timestamp"];
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.raw);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    r.headers["webhook-signature"]
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn receive_hook(req: HttpRequest, body: web::Bytes, st: State) -> HttpResponse {
    let headers = header_map(&req);
    let mut s = st.lock().unwrap();
    s.hooks.push(Received {
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        at: Instant::now(),
    });
    let status = if s.hook_statuses.is_empty() {
        200
    } else {
        s.hook_statuses.remove(0)
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

impl Peer {
    /// Starts the peer on a free loopback port (inside an actix system).
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(PeerState::default()));
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/audio/{name}", web::get().to(serve_file))
                .route("/redirect/{name}", web::get().to(serve_redirect))
                .route("/stream/{name}", web::get().to(serve_stream))
                .route("/trickle/{name}", web::get().to(serve_trickle))
                .route("/hook", web::post().to(receive_hook))
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

    /// Serves `data` at `/audio/{name}`; returns its URL.
    pub fn put(&self, name: &str, data: Vec<u8>) -> String {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(name.into(), data.into());
        format!("{}/audio/{name}", self.base)
    }

    /// Serves generated `silence` at `/stream/{name}`; returns its path.
    pub fn stream(&self, name: &str, silence: Silence) -> String {
        self.state
            .lock()
            .unwrap()
            .streams
            .insert(name.into(), silence);
        format!("/stream/{name}")
    }

    /// Serves a WAV header and then a byte every `every_ms` at `/trickle/{name}`; returns
    /// its path.
    pub fn trickle(&self, name: &str, every_ms: u64) -> String {
        self.state
            .lock()
            .unwrap()
            .trickles
            .insert(name.into(), every_ms);
        format!("/trickle/{name}")
    }

    /// Answers `/redirect/{name}` with a 302 to `location` (`None`: without `Location`);
    /// returns its path.
    pub fn redirect(&self, name: &str, location: Option<String>) -> String {
        self.state
            .lock()
            .unwrap()
            .redirects
            .insert(name.into(), location);
        format!("/redirect/{name}")
    }

    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.base)
    }

    pub fn hooks(&self) -> Vec<Received> {
        self.state.lock().unwrap().hooks.clone()
    }

    /// Every audio request so far (file names, in arrival order).
    pub fn audio_requests(&self) -> Vec<String> {
        self.state.lock().unwrap().audio_requests.clone()
    }

    /// Waits until `n` webhooks arrived.
    pub async fn wait_hooks(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let hooks = self.hooks();
            if hooks.len() >= n || Instant::now() > deadline {
                return hooks;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
