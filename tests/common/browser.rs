//! A real browser for page tests: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (package `chromium-driver`; `scripts/setup` installs both). Each browser has a
//! fresh profile and its own chromedriver on a free port.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn find(names: &[&str]) -> String {
    for n in names {
        for dir in ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"] {
            let p = PathBuf::from(dir).join(n);
            if p.exists() {
                return p.display().to_string();
            }
        }
    }
    panic!("none of {names:?} is installed: run scripts/setup (Debian: apt-get install chromium chromium-driver)")
}

/// Where a test's screenshots go: `$CARGO_TARGET_TMPDIR/studio/NAME.png`, and with
/// `TUTTI_STUDIO_DOCS=1` also `docs/studio/NAME.png` (the README's pictures).
pub fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("studio")
}

impl Browser {
    pub async fn start() -> Browser {
        let port = super::free_addr().port();
        let driver = Command::new(find(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--window-size=1200,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": find(&["chromium", "chromium-browser"]), "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url` and waits for the studio's script to have started.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
        self.wait_js(
            "return document.body.dataset.ready === 'true'",
            "the page to start",
        )
        .await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns true; panics with `what` after 60 s.
    pub async fn wait_js(&self, script: &str, what: &str) {
        self.wait_js_for(script, what, Duration::from_secs(60))
            .await
    }

    pub async fn wait_js_for(&self, script: &str, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Text of the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        let v = self
            .js(&format!(
                "const e = document.querySelector({}); return e ? e.textContent : '';",
                json!(css)
            ))
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the value of an input by typing into it (input events fire as for a person).
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Picks the option of a `<select>` with this value.
    pub async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// Saves a screenshot of the whole page as a test artifact (see `artifact_dir`): the window
    /// grows to the page's height for the picture, then returns to its size.
    pub async fn screenshot(&self, name: &str) {
        let size = self
            .js("return [window.outerWidth, window.outerHeight, document.documentElement.scrollHeight]")
            .await;
        let dim = |i: usize| size[i].as_u64().unwrap_or(1000) as u32;
        let (w, h, page) = (dim(0), dim(1), dim(2));
        self.set_width(
            w,
            (page + (h.saturating_sub(page.min(h)))).clamp(h, 4000) + 120,
        )
        .await;
        self.js("window.scrollTo(0, 0); return true").await;
        let png = self.client.screenshot().await.expect("screenshot");
        self.set_width(w, h).await;
        let dir = artifact_dir();
        std::fs::create_dir_all(&dir).expect("artifact dir");
        std::fs::write(dir.join(format!("{name}.png")), &png).expect("write screenshot");
        if std::env::var("TUTTI_STUDIO_DOCS").as_deref() == Ok("1") {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/studio");
            std::fs::create_dir_all(&docs).expect("docs dir");
            std::fs::write(docs.join(format!("{name}.png")), &png).expect("write doc picture");
        }
    }

    pub async fn set_width(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("window size");
    }

    /// Ends the session (chromium quits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a panic: chromedriver ends the browsers it started when told to stop.
        let _ = Command::new("kill")
            .args(["-TERM", &self.driver.id().to_string()])
            .status();
        let _ = self.driver.wait();
    }
}
