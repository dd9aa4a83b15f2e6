//! A typed client of the API: one base URL, one HTTP client and one credential, with the
//! requests the suites make (submit, read, poll, cancel) and an authenticated builder for
//! everything else.

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use super::{PASSWORD, USER};

/// The credential a client sends.
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP Basic with a user name and a password (or a client's key).
    Basic(String, String),
    /// `Authorization: Bearer <key>`.
    Bearer(String),
    /// No `Authorization` header.
    None,
}

impl Auth {
    /// HTTP Basic with `user` and `password`.
    pub fn basic(user: &str, password: &str) -> Self {
        Self::Basic(user.into(), password.into())
    }

    /// A bearer `key`.
    pub fn bearer(key: &str) -> Self {
        Self::Bearer(key.into())
    }
}

/// A client of one API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `http://<host>:<port>`, without a trailing slash.
    pub base: String,
    pub http: reqwest::Client,
    pub auth: Auth,
}

/// How often the polling calls ask.
const POLL: Duration = Duration::from_millis(50);

impl ApiClient {
    /// A client of `base` with `auth` and a default HTTP client (redirects followed).
    pub fn new(base: &str, auth: Auth) -> Self {
        Self {
            base: base.to_string(),
            http: reqwest::Client::new(),
            auth,
        }
    }

    /// A client of an in-process app ([`spawn_app`](super::spawn_app)) at `base`, as its
    /// administrator, following no redirect (as the app's own client).
    pub fn for_app(base: &str) -> Self {
        Self::new(base, Auth::basic(USER, PASSWORD)).with_http(no_redirects())
    }

    /// The same client over `http` (a timeout, a pool size, a redirect policy).
    pub fn with_http(self, http: reqwest::Client) -> Self {
        Self { http, ..self }
    }

    /// Another credential on the same HTTP client.
    pub fn with_auth(&self, auth: Auth) -> Self {
        Self {
            auth,
            ..self.clone()
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request for `path` with the credential; the caller adds the rest and sends it.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.auth {
            Auth::Basic(user, password) => req.basic_auth(user, Some(password)),
            Auth::Bearer(key) => req.bearer_auth(key),
            Auth::None => req,
        }
    }

    /// `POST /generate` with a JSON body.
    pub async fn generate(&self, body: &Value) -> Response {
        self.request(Method::POST, "/generate")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /generate`, which must be accepted (202); the answer's body.
    pub async fn submit(&self, body: &Value) -> Value {
        let resp = self.generate(body).await;
        assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
        resp.json().await.unwrap()
    }

    /// [`submit`](Self::submit), and the new task's id.
    pub async fn submit_id(&self, body: &Value) -> String {
        self.submit(body).await["task_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A GET of `path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    /// A DELETE of `path`.
    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.unwrap()
    }

    /// A GET of `path`: the status and the JSON body (`Null` when it is not JSON); `(0,
    /// Null)` when no answer came.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        match self.request(Method::GET, path).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// The bytes at `url` (a signed stem link), fetched without credentials; fails on
    /// anything but 200.
    pub async fn download(&self, url: &str) -> Vec<u8> {
        let resp = self.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        resp.bytes().await.unwrap().to_vec()
    }

    /// `GET /tasks/{id}`: the task's view.
    pub async fn task(&self, id: &str) -> Value {
        self.get(&format!("/tasks/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// `GET /tasks/{id}`: `Ok(Some)` the task, `Ok(None)` no such task (404), `Err` the API
    /// could not answer (Redis down, connection refused...).
    pub async fn try_task(&self, id: &str) -> Result<Option<Value>, String> {
        let resp = self
            .request(Method::GET, &format!("/tasks/{id}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            200 => resp.json().await.map(Some).map_err(|e| e.to_string()),
            404 => Ok(None),
            s => Err(format!("status {s}")),
        }
    }

    /// Polls task `id` until `done` holds for its view or `timeout` passes; the last view.
    pub async fn poll_task(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.task(id).await;
            if done(&t) || Instant::now() >= deadline {
                return t;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls task `id` until `pred` holds for its status; the view then. Panics with the
    /// last view after `timeout`.
    pub async fn wait_status(
        &self,
        id: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Value {
        let status = |t: &Value| pred(t["status"].as_str().unwrap_or_default());
        let t = self.poll_task(id, timeout, status).await;
        assert!(
            status(&t),
            "task {id}: no matching status in {timeout:?}: {t}"
        );
        t
    }
}

/// An HTTP client that follows no redirect (a redirect is then an answer to look at).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}
