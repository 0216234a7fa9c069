//! A small headless-Chromium driver over the Chrome DevTools Protocol (CDP), for end-to-end tests.
//!
//! # Protocol flow
//! 1. [`Browser::launch`] starts Chromium with `--remote-debugging-port=0` and a fresh
//!    `--user-data-dir`, and reads its stderr line by line until `DevTools listening on ws://…`
//!    (at most 30 s; the error quotes the stderr seen so far). The rest of stderr is drained in
//!    the background so that Chromium never blocks on a full pipe.
//! 2. It opens a WebSocket to that browser endpoint. A writer task sends queued commands; a reader
//!    task demultiplexes what comes back: a message with an `id` is the reply to the command waiting
//!    on that id (a oneshot; an `error` reply becomes [`BrowserError::Protocol`]), a message with a
//!    `method` is an event, broadcast to every subscriber.
//! 3. `Target.createTarget` opens a page; `Target.attachToTarget {flatten: true}` returns the
//!    `sessionId` that the page's commands carry and its events come back with. The session enables
//!    `Page`, `Runtime` and lifecycle events (`Page.setLifecycleEventsEnabled`).
//!
//! # Waits
//! A navigation is done when the main frame has committed a document (`Page.frameNavigated`, whose
//! `loaderId` names the document) and that same document fired the lifecycle event `load`
//! (`Page.lifecycleEvent {name: "load", loaderId}`), in either order. Matching on `loaderId` keeps
//! a late `load` of the previous document from passing for the new one; a redirect chain (302s) is
//! one navigation with one final document. Events are subscribed to *before* the command that
//! starts the navigation is sent, so none can be missed whatever order replies and events arrive
//! in. [`Page::goto`] knows the new `loaderId` from `Page.navigate`'s reply;
//! [`Page::click_and_wait`] takes any main-frame document other than the one shown before the click.
//! A committed error page (`unreachableUrl`) is a failed navigation.
//!
//! Every wait (each command's reply, each navigation) is bounded by the page's timeout (30 s by
//! default), and a timeout says what it waited for. Dropping [`Browser`] kills Chromium's process
//! group and removes the profile; [`Browser::close`] first asks Chromium to exit (`Browser.close`).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

/// Default bound for every wait.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Names tried on `PATH` by [`Browser::find`], in order.
const NAMES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];
const FLAGS: &str = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --no-default-browser-check --remote-debugging-port=0";

/// What went wrong while driving the browser.
#[derive(Debug)]
pub(crate) enum BrowserError {
    /// Chromium could not be started or did not announce its DevTools endpoint.
    Launch(String),
    /// A protocol command was answered with an error: `method: message`.
    Protocol(String),
    /// A wait exceeded its bound; the text says what was awaited.
    Timeout(String),
    /// A navigation failed (e.g. `net::ERR_CONNECTION_REFUSED`).
    Navigation(String),
    /// No element matched the selector.
    NotFound(String),
    /// Evaluated JavaScript threw (the exception's description), or gave an unexpected value.
    Js(String),
    /// The DevTools connection is gone (Chromium exited or crashed).
    Closed(String),
}

impl std::fmt::Display for BrowserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Launch(m) => write!(f, "browser launch failed: {m}"),
            Self::Protocol(m) => write!(f, "DevTools command failed: {m}"),
            Self::Timeout(m) => write!(f, "timed out waiting for {m}"),
            Self::Navigation(m) => write!(f, "navigation failed: {m}"),
            Self::NotFound(m) => write!(f, "no element matches selector {m}"),
            Self::Js(m) => write!(f, "JavaScript error: {m}"),
            Self::Closed(m) => write!(f, "DevTools connection closed while {m}"),
        }
    }
}

impl std::error::Error for BrowserError {}

pub(crate) type Result<T> = std::result::Result<T, BrowserError>;

type Reply = oneshot::Sender<std::result::Result<Value, String>>;
/// Commands awaiting their reply, by id; `None` once the connection is gone.
type Pending = Arc<Mutex<Option<HashMap<u64, Reply>>>>;
type WsRead = SplitStream<WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>>;

/// The shared DevTools connection.
struct Conn {
    out: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    pending: Pending,
    /// Never read, only `resubscribe`d: closes when the reader task (the only sender) ends.
    events: broadcast::Receiver<Arc<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads every message: replies go to their waiting command, events to the broadcast.
async fn read_loop(mut stream: WsRead, pending: Pending, events: broadcast::Sender<Arc<Value>>) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if let Some(id) = v["id"].as_u64() {
            let waiter = lock(&pending).as_mut().and_then(|w| w.remove(&id));
            let reply = match v["error"]["message"].as_str() {
                Some(e) => Err(e.to_string()),
                None if v.get("error").is_some() => Err(v["error"].to_string()),
                None => Ok(v["result"].clone()),
            };
            if let Some(w) = waiter {
                let _ = w.send(reply);
            }
        } else if v["method"].is_string() {
            let _ = events.send(Arc::new(v)); // an event: {method, params, sessionId?}
        }
    }
    *lock(&pending) = None; // dropping the reply senders wakes every waiter with "closed"
}

/// A running headless Chromium with one page attached.
pub(crate) struct Browser {
    child: Option<Child>,
    root: Page, // browser-level commands: no session
    page: Page,
    _profile: tempfile::TempDir, // last field: removed once Chromium is gone
}

impl Browser {
    /// `$CHROMIUM` if set, else the first of the usual Chromium/Chrome names found on `PATH`.
    pub(crate) fn find() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        let dirs = || std::env::split_paths(&path);
        NAMES
            .iter()
            .flat_map(|name| dirs().map(move |dir| dir.join(name)))
            .find(|p| p.is_file())
    }

    /// Starts Chromium headless, connects to DevTools and opens a page (see the module doc).
    pub(crate) async fn launch(path: impl AsRef<Path>) -> Result<Browser> {
        let path = path.as_ref();
        let profile = tempfile::tempdir()
            .map_err(|e| BrowserError::Launch(format!("creating the profile dir: {e}")))?;
        let mut child = Command::new(path)
            .args(FLAGS.split_whitespace())
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0) // its own group, so that `kill_child` reaches every helper process
            .spawn()
            .map_err(|e| BrowserError::Launch(format!("spawning {}: {e}", path.display())))?;
        let setup = async {
            let conn = connect(&mut child).await?;
            let root = Page {
                conn,
                session: None,
                timeout: DEFAULT_TIMEOUT,
            };
            let page = root.open_page().await?;
            Ok((root, page))
        };
        match setup.await {
            Ok((root, page)) => Ok(Browser {
                child: Some(child),
                root,
                page,
                _profile: profile,
            }),
            Err(e) => {
                kill_child(&mut child);
                Err(e)
            }
        }
    }

    /// The page opened by [`Browser::launch`].
    pub(crate) fn page(&self) -> &Page {
        &self.page
    }

    /// Opens another page (tab) and attaches to it.
    pub(crate) async fn new_page(&self) -> Result<Page> {
        self.root.open_page().await
    }

    /// Asks Chromium to exit (`Browser.close`), waits for the connection to drop, then reaps it.
    pub(crate) async fn close(mut self) -> Result<()> {
        let mut events = self.root.conn.events.resubscribe();
        let asked = self.root.send("Browser.close", json!({})).await;
        // The reader task drops the only event sender when the socket closes: wait for that.
        let closed = async { while !matches!(events.recv().await, Err(RecvError::Closed)) {} };
        let gone = timeout(DEFAULT_TIMEOUT, closed).await;
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child); // stragglers of its group, if any; reaps it either way
        }
        match asked {
            Err(BrowserError::Closed(_)) | Ok(_) => {} // the socket may close before the reply
            Err(e) => return Err(e),
        }
        gone.map_err(|_| BrowserError::Timeout("Chromium to exit after Browser.close".into()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

/// Reads the DevTools URL from stderr, connects, and starts the writer and reader tasks.
async fn connect(child: &mut Child) -> Result<Arc<Conn>> {
    let launch_err = BrowserError::Launch;
    let no_pipe = || launch_err("no stderr pipe".into());
    let stderr = child.stderr.take().ok_or_else(no_pipe)?;
    let stderr = tokio::process::ChildStderr::from_std(stderr)
        .map_err(|e| launch_err(format!("reading stderr: {e}")))?;
    let mut lines = BufReader::new(stderr).split(b'\n'); // bytes: a non-UTF-8 line is no error
    let mut seen = String::new();
    let found = timeout(DEFAULT_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_segment().await {
            let line = String::from_utf8_lossy(&line).into_owned();
            match line.find("ws://") {
                Some(at) if line.contains("DevTools listening on") => {
                    return Some(line[at..].into())
                }
                _ => seen.push_str(&(line + "\n")),
            }
        }
        None::<String>
    })
    .await;
    let waited = format!("`DevTools listening on` ({DEFAULT_TIMEOUT:?}); stderr:\n{seen}");
    let url = found
        .map_err(|_| BrowserError::Timeout(waited))?
        .ok_or_else(|| {
            launch_err(format!(
                "Chromium exited before announcing DevTools; stderr:\n{seen}"
            ))
        })?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_segment().await {} });
    let connecting = tokio_tungstenite::connect_async(url.trim());
    let (ws, _) = timeout(DEFAULT_TIMEOUT, connecting)
        .await
        .map_err(|_| BrowserError::Timeout(format!("the WebSocket connection to {url}")))?
        .map_err(|e| launch_err(format!("connecting to {url}: {e}")))?;
    let (mut sink, stream) = ws.split();
    let (out, mut queued) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(text) = queued.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
    let (sender, events) = broadcast::channel(1024);
    tokio::spawn(read_loop(stream, pending.clone(), sender));
    Ok(Arc::new(Conn {
        out,
        next_id: AtomicU64::new(1),
        pending,
        events,
    }))
}

/// SIGKILLs Chromium's whole process group, then reaps it (blocking only as long as SIGKILL takes).
/// The group matters: helper processes (GPU, network service) outlive a killed browser process for
/// a moment and keep writing to the profile, which makes removing the profile dir fail.
fn kill_child(child: &mut Child) {
    let group = format!("-{}", child.id());
    let killed = Command::new("kill").args(["-KILL", "--", &group]).output();
    if !matches!(killed, Ok(out) if out.status.success()) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn str_at(v: &Value, pointer: &str, what: &str) -> Result<String> {
    let found = v.pointer(pointer).and_then(Value::as_str);
    found
        .map(str::to_string)
        .ok_or_else(|| BrowserError::Protocol(format!("{what}: reply lacks {pointer}: {v}")))
}

/// One page (tab), attached through a flattened session. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Page {
    conn: Arc<Conn>,
    session: Option<String>,
    timeout: Duration,
}

impl Page {
    /// Changes the bound used by this page's waits.
    pub(crate) fn set_timeout(&mut self, limit: Duration) {
        self.timeout = limit;
    }

    /// Sends a raw protocol command on this page's session and returns its `result`.
    pub(crate) async fn send(&self, method: &str, params: Value) -> Result<Value> {
        let c = &self.conn;
        let closed = || BrowserError::Closed(format!("awaiting the reply to {method}"));
        let id = c.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        lock(&c.pending).as_mut().ok_or_else(closed)?.insert(id, tx);
        c.out.send(msg.to_string()).map_err(|_| closed())?;
        let Ok(reply) = timeout(self.timeout, rx).await else {
            if let Some(waiting) = lock(&c.pending).as_mut() {
                waiting.remove(&id);
            }
            let waited = self.timeout;
            return Err(BrowserError::Timeout(format!(
                "the reply to {method} ({waited:?})"
            )));
        };
        let reply = reply.map_err(|_| closed())?;
        reply.map_err(|e| BrowserError::Protocol(format!("{method}: {e}")))
    }

    /// `Target.createTarget` + `Target.attachToTarget {flatten}`, then enables the page's domains.
    async fn open_page(&self) -> Result<Page> {
        let created = self
            .send("Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target = str_at(&created, "/targetId", "Target.createTarget")?;
        let params = json!({ "targetId": target, "flatten": true });
        let attached = self.send("Target.attachToTarget", params).await?;
        let session = Some(str_at(&attached, "/sessionId", "Target.attachToTarget")?);
        let page = Page {
            conn: self.conn.clone(),
            session,
            timeout: DEFAULT_TIMEOUT,
        };
        page.send("Page.enable", json!({})).await?;
        page.send("Runtime.enable", json!({})).await?;
        page.send("Page.setLifecycleEventsEnabled", json!({ "enabled": true }))
            .await?;
        Ok(page)
    }

    /// Navigates and returns once the final document (after any redirects) has loaded.
    pub(crate) async fn goto(&self, url: &str) -> Result<()> {
        let events = self.conn.events.resubscribe(); // before the command: nothing can be missed
        let nav = self.send("Page.navigate", json!({ "url": url })).await?;
        if let Some(err) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(BrowserError::Navigation(format!("{url}: {err}")));
        }
        let Some(loader) = nav["loaderId"].as_str() else {
            return Ok(()); // same-document navigation (fragment): nothing to load
        };
        let frame = str_at(&nav, "/frameId", "Page.navigate")?;
        let what = format!("{url} to load");
        self.wait_loaded(events, &frame, |l| l == loader, &what)
            .await
    }

    /// Clicks the first element matching `selector` and waits for the navigation it causes to load.
    pub(crate) async fn click_and_wait(&self, selector: &str) -> Result<()> {
        let tree = self.send("Page.getFrameTree", json!({})).await?;
        let frame = str_at(&tree, "/frameTree/frame/id", "Page.getFrameTree")?;
        let old = str_at(&tree, "/frameTree/frame/loaderId", "Page.getFrameTree")?;
        let events = self.conn.events.resubscribe(); // before the click: nothing can be missed
        let sel = json!(selector);
        let js = format!("(e => e ? (e.click(), true) : false)(document.querySelector({sel}))");
        if self.eval(&js).await? != Value::Bool(true) {
            return Err(BrowserError::NotFound(sel.to_string()));
        }
        let what = format!("the navigation after clicking {sel} to load");
        self.wait_loaded(events, &frame, |l| l != old, &what).await
    }

    /// Waits until `frame` has committed a document whose loaderId is `wanted` and it is loaded.
    async fn wait_loaded(
        &self,
        mut events: broadcast::Receiver<Arc<Value>>,
        frame: &str,
        wanted: impl Fn(&str) -> bool,
        what: &str,
    ) -> Result<()> {
        let mut committed: Option<(String, Option<String>)> = None; // (loaderId, unreachableUrl)
        let mut loaded = HashSet::new();
        let wait = async {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => {
                        return Err(BrowserError::Closed(format!("waiting for {what}")))
                    }
                };
                let (params, session) = (&ev["params"], ev["sessionId"].as_str());
                let (nav, p) = match ev["method"].as_str().unwrap_or_default() {
                    _ if session != self.session.as_deref() => continue,
                    "Page.frameNavigated" => (true, &params["frame"]),
                    "Page.lifecycleEvent" if params["name"] == "load" => (false, params),
                    _ => continue,
                };
                let on_frame = p[if nav { "id" } else { "frameId" }] == frame;
                let Some(loader) = p["loaderId"].as_str().filter(|l| on_frame && wanted(l)) else {
                    continue;
                };
                if nav {
                    let unreachable = p["unreachableUrl"].as_str().map(str::to_string);
                    committed = Some((loader.to_string(), unreachable));
                } else {
                    loaded.insert(loader.to_string());
                }
                match &committed {
                    Some((l, None)) if loaded.contains(l) => return Ok(()),
                    Some((l, Some(u))) if loaded.contains(l) => {
                        return Err(BrowserError::Navigation(format!("{u} could not be loaded")))
                    }
                    _ => {}
                }
            }
        };
        let limit = self.timeout;
        let timed_out = |_| BrowserError::Timeout(format!("{what} ({limit:?})"));
        timeout(limit, wait).await.map_err(timed_out)?
    }

    /// `location.href` of the current document.
    pub(crate) async fn url(&self) -> Result<String> {
        self.eval_string("location.href").await
    }

    /// `document.body.innerText` (empty if there is no body).
    pub(crate) async fn text(&self) -> Result<String> {
        self.eval_string("document.body ? document.body.innerText : ''")
            .await
    }

    /// The document's `outerHTML`.
    pub(crate) async fn html(&self) -> Result<String> {
        self.eval_string("document.documentElement.outerHTML").await
    }

    async fn eval_string(&self, js: &str) -> Result<String> {
        match self.eval(js).await? {
            Value::String(s) => Ok(s),
            other => Err(BrowserError::Js(format!(
                "`{js}` gave {other}, not a string"
            ))),
        }
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value as JSON (`null` for
    /// `undefined`). A thrown exception is [`BrowserError::Js`] with the exception's description.
    pub(crate) async fn eval(&self, js: &str) -> Result<Value> {
        let params = json!({ "expression": js, "returnByValue": true, "awaitPromise": true });
        let r = self.send("Runtime.evaluate", params).await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let desc = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str());
            return Err(BrowserError::Js(
                desc.unwrap_or("unknown exception").to_string(),
            ));
        }
        Ok(r["result"]["value"].clone())
    }
}
