//! Headless Chromium for the tests that look at a page: the live dashboard
//! (`tests/monitor.rs`) and the demo's report (`tests/demo.rs`).
//!
//! Owns: finding Debian's chromium (or `$CHROMIUM`), running it bounded in
//! time with the flags this machine needs, the rule for a machine without
//! it (fail, unless `HONGBAO_SKIP_BROWSER` is set), and the check that a
//! demo report's verdict is on its first screen. Must not: leave
//! a browser running (it is killed by its own pid past its deadline).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one chromium run may take.
const RUN_MAX: Duration = Duration::from_secs(90);

/// Debian's chromium, or `$CHROMIUM`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium, or None when there is none and `HONGBAO_SKIP_BROWSER` is set
/// (said on stderr); without either the test fails saying how to get it.
#[track_caller]
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("HONGBAO_SKIP_BROWSER").is_some(),
            "no chromium: install Debian's chromium (bash .ci/run does), or set HONGBAO_SKIP_BROWSER=1 to skip the browser's part"
        );
        eprintln!("skipped the browser's part: no chromium and HONGBAO_SKIP_BROWSER is set");
    }
    found
}

/// Runs headless Chromium on `url` in a `width` x `height` window with
/// `mode` (`--screenshot=F` or `--dump-dom`), bounded; returns stdout. The
/// flags are the ones this machine needs (no sandbox as root, no
/// background networking).
pub fn run(
    chromium: &Path,
    profile: &Path,
    (width, height): (u32, u32),
    mode: &str,
    url: &str,
) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Scripts and their fetches run for this long before the shot.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    // Killed (our own child, by its pid) past the deadline.
    super::wait_exit(&mut child, RUN_MAX);
    reader.join().expect("the reader")
}

/// A PNG's width and height (its IHDR chunk), None when `bytes` is not a
/// PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    Some((be(16)?, be(20)?))
}

/// The browser window of a laptop's first screen.
const FIRST_SCREEN: (u32, u32) = (1280, 800);

/// Looks at `OUT/report.html` in headless Chromium at 1280x800: the
/// verdict block (id `verdict`) ends within the first screen and holds
/// `audit`; a screenshot of that screen is kept as
/// `OUT/report-first-screen.png`. Skipped (said) without chromium when
/// `HONGBAO_SKIP_BROWSER` is set.
pub fn verdict_on_the_first_screen(out: &Path, audit: &str) {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let report = out.join("report.html");
    let profile = out.join("chromium-profile");
    let shot = out.join("report-first-screen.png");
    run(
        &chromium,
        &profile,
        FIRST_SCREEN,
        &format!("--screenshot={}", shot.display()),
        &format!("file://{}", report.display()),
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(png_size(&png), Some(FIRST_SCREEN), "{}", shot.display());
    assert!(png.len() > 1_000, "an empty screenshot: {}", shot.display());

    // The same page with a script that writes where the verdict is laid
    // out onto the body, read back from the DOM Chromium dumps.
    let page = std::fs::read_to_string(&report).expect("report.html");
    let probe = out.join("report-probe.html");
    std::fs::write(
        &probe,
        page.replacen(
            "</body>",
            "<script>const r = document.getElementById('verdict').getBoundingClientRect();\
             document.body.dataset.verdictTop = Math.floor(r.top);\
             document.body.dataset.verdictBottom = Math.ceil(r.bottom);\
             document.body.dataset.viewportHeight = window.innerHeight;</script></body>",
            1,
        ),
    )
    .expect("writing the probe page");
    let dom = run(
        &chromium,
        &profile,
        FIRST_SCREEN,
        "--dump-dom",
        &format!("file://{}", probe.display()),
    );
    let attr = |name: &str| -> i64 {
        let at = dom
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in the dumped page (the probe did not run)"));
        let rest = &dom[at + name.len() + 2..];
        rest[..rest.find('"').unwrap_or(0)]
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (top, bottom) = (attr("data-verdict-top"), attr("data-verdict-bottom"));
    let viewport = attr("data-viewport-height");
    assert!(
        0 <= top && top < bottom && bottom <= viewport && bottom < i64::from(FIRST_SCREEN.1),
        "the verdict is laid out at {top}..{bottom} px, the first screen is {viewport} px high"
    );
    let section = dom
        .split_once("id=\"verdict\"")
        .and_then(|(_, rest)| rest.split_once("</section>"))
        .map(|(inside, _)| inside)
        .expect("the verdict section in the dumped page");
    assert!(section.contains(audit), "{section}");
    let _ = std::fs::remove_dir_all(&profile);
}
