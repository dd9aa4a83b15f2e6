//! The API's URLs: syntax and unicode tricks, schemes, and every spelling of a non-public
//! target (literal, respelled, or a name that resolves to one through /etc/hosts), for the
//! audio and the webhook URL alike.

use serde_json::json;

use super::api_cases::{Answer, Body, case, reject422, run_api_table, with};
use crate::common::spawn_app;

/// Names in /etc/hosts (and this machine's own name) that resolve only to non-public
/// addresses and that the `localhost` rule does not catch by name: the submission-time DNS
/// check must refuse them.
fn local_names() -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut names: Vec<String> = std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| {
            let l = n.to_ascii_lowercase();
            !l.is_empty() && l != "localhost" && !l.ends_with(".localhost") && !l.contains(':')
        })
        .filter(|n| {
            let addrs: Vec<_> = (n.as_str(), 80)
                .to_socket_addrs()
                .map(|a| a.collect())
                .unwrap_or_default();
            !addrs.is_empty() && addrs.iter().all(|a| !uvr::net::is_public(a.ip()))
        })
        .collect()
}

/// URL syntax and unicode tricks, schemes, and every spelling of a non-public target.
#[actix_rt::test]
async fn api_rejects_hostile_urls_with_stable_codes() {
    let app = spawn_app(&[]).await;
    let mut cases = Vec::new();
    let mut audio = |name: &str, url: &str, answer: Answer| {
        cases.push(case(
            format!("audio {name}: {url:?}"),
            Body::Json(with("audio", Some(json!(url)))),
            answer,
        ));
    };
    let invalid = reject422("invalid_url", "audio");
    let scheme = reject422("unsupported_scheme", "audio");
    let private = reject422("private_address", "audio");
    // Syntax.
    for (name, url) in [
        ("not a URL", "not a url"),
        ("empty", ""),
        ("relative path", "/audio.wav"),
        ("scheme-relative", "//93.184.215.14/a.wav"),
        ("no host", "http://"),
        ("port without host", "http://:80/a.wav"),
        ("leading space", " https://93.184.215.14/a.wav"),
        ("trailing newline", "https://93.184.215.14/a.wav\n"),
        ("tab inside the host", "http://127.0.0\t.1/a.wav"),
        ("newline inside the host", "http://93.184.215.\n14/a.wav"),
        ("NUL inside", "https://93.184.215.14/a\u{0}.wav"),
        ("bad port", "http://93.184.215.14:99999/a.wav"),
        ("bad IPv6", "http://[::1/a.wav"),
        ("IPv6 zone id", "http://[fe80::1%25eth0]/a.wav"),
        ("RTL override in the host", "http://\u{202E}vaw.live/a.wav"),
        (
            "RTL override inside an IP",
            "http://127.0.0.1\u{202E}/a.wav",
        ),
    ] {
        audio(name, url, invalid);
    }
    // Schemes (refused whatever the host).
    for url in [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "FILE:///etc/passwd",
        "ftp://93.184.215.14/a.wav",
        "gopher://93.184.215.14:70/_GET%20/",
        "data:audio/wav;base64,UklGRiQAAABXQVZFZm10IA==",
        "javascript:alert(1)",
        "ws://93.184.215.14/a",
        "wss://93.184.215.14/a",
        "dict://93.184.215.14:11211/stats",
        "ldap://93.184.215.14/",
        "sftp://93.184.215.14/a.wav",
        "jar:http://93.184.215.14/a.jar!/",
        "mailto:a@93.184.215.14",
    ] {
        audio("scheme", url, scheme);
    }
    // Loopback, private, link-local, CGNAT, metadata, reserved: literal and respelled.
    for url in [
        "http://127.0.0.1/a.wav",
        "http://127.0.0.1:6379/",
        "http://127.1/a.wav",
        "http://127.0.0.1./a.wav",
        "http://0x7f000001/a.wav",
        "http://017700000001/a.wav",
        "http://2130706433/a.wav",
        "http://0x7f.0.0.1/a.wav",
        "http://0177.0.0.1/a.wav",
        "http://127.000.000.001/a.wav",
        "http://0/a.wav",
        "http://0.0.0.0/a.wav",
        "http://10.0.0.1/a.wav",
        "http://172.16.0.1/a.wav",
        "http://192.168.1.1/a.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://100.64.0.1/a.wav",
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/",
        "http://198.18.0.1/a.wav",
        "http://224.0.0.1/a.wav",
        "http://255.255.255.255/a.wav",
        "http://[::1]/a.wav",
        "http://[::]/a.wav",
        "http://[::ffff:127.0.0.1]/a.wav",
        "http://[::ffff:7f00:1]/a.wav",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/a.wav",
        "http://[::ffff:169.254.169.254]/a.wav",
        "http://[::127.0.0.1]/a.wav",
        "http://[fd00::1]/a.wav",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/a.wav",
        "http://[fc00::1]/a.wav",
        "http://[64:ff9b::a9fe:a9fe]/a.wav",
        "http://[2002:7f00:1::]/a.wav",
        "http://[ff02::1]/a.wav",
        "http://[2001:db8::1]/a.wav",
    ] {
        audio("non-public", url, private);
    }
    // Unicode and parser tricks that land on a non-public host.
    for (name, url) in [
        (
            "ideographic full stops",
            "http://127\u{3002}0\u{3002}0\u{3002}1/a.wav",
        ),
        (
            "fullwidth full stops",
            "http://127\u{FF0E}0\u{FF0E}0\u{FF0E}1/a.wav",
        ),
        (
            "halfwidth ideographic full stops",
            "http://169\u{FF61}254\u{FF61}169\u{FF61}254/",
        ),
        (
            "fullwidth digits",
            "http://\u{FF11}\u{FF12}\u{FF17}.\u{FF10}.\u{FF10}.\u{FF11}/a.wav",
        ),
        (
            "fullwidth localhost",
            "http://\u{FF4C}\u{FF4F}\u{FF43}\u{FF41}\u{FF4C}\u{FF48}\u{FF4F}\u{FF53}\u{FF54}/a.wav",
        ),
        (
            "IDN homograph of localhost (roman numeral l)",
            "http://\u{217C}ocalhost/a.wav",
        ),
        ("soft hyphen in localhost", "http://local\u{00AD}host/a.wav"),
        (
            "uppercase LOCALHOST with a trailing dot",
            "http://LOCALHOST./a.wav",
        ),
        ("localhost with a port", "http://localhost:8000/a.wav"),
        ("a subdomain of localhost", "http://foo.localhost/a.wav"),
        (
            "a deep subdomain of localhost",
            "http://a.b.c.localhost/a.wav",
        ),
        ("percent-encoded IP", "http://%31%32%37.0.0.1/a.wav"),
        (
            "percent-encoded localhost",
            "http://%6c%6f%63%61%6c%68%6f%73%74/a.wav",
        ),
        (
            "userinfo before a private host",
            "http://good@127.0.0.1/a.wav",
        ),
        (
            "public-looking userinfo before a private host",
            "http://93.184.215.14@127.0.0.1/a.wav",
        ),
        (
            "userinfo and port before metadata",
            "http://93.184.215.14:80@169.254.169.254/",
        ),
        ("backslashes for slashes", "http:\\\\127.0.0.1\\a.wav"),
        (
            "backslash before userinfo",
            "http://127.0.0.1\\@93.184.215.14/a.wav",
        ),
        ("mixed-case scheme, private host", "HtTp://127.0.0.1/a.wav"),
    ] {
        audio(name, url, private);
    }
    // Tricks that land on a public (or unresolvable) host: accepted and stored normalised;
    // the fetcher checks the address again when it connects.
    for (name, url) in [
        (
            "IDN homograph (Cyrillic a), resolving nowhere",
            "http://ex\u{0430}mple.com/a.wav",
        ),
        (
            "IDN homograph of apple, resolving nowhere",
            "http://\u{0430}\u{0440}\u{0440}\u{04CF}\u{0435}.com/a.wav",
        ),
        (
            "RTL override in the path",
            "https://93.184.215.14/\u{202E}vaw.exe",
        ),
        (
            "private-looking userinfo, public host",
            "http://127.0.0.1@93.184.215.14/a.wav",
        ),
        (
            "backslash then @ (path, not userinfo)",
            "http://93.184.215.14\\@127.0.0.1/a.wav",
        ),
        (
            "fragment hiding a private host",
            "http://93.184.215.14#@127.0.0.1/a.wav",
        ),
        ("uppercase scheme", "HTTPS://93.184.215.14/a.wav"),
        (
            "zero-width space in the host (IDNA drops it)",
            "http://exa\u{200B}mple.com/a.wav",
        ),
    ] {
        audio(name, url, Answer::Accept);
    }
    // Names that resolve (through /etc/hosts) to loopback: refused by the DNS check.
    let names = local_names();
    eprintln!("names resolving to non-public addresses here: {names:?}");
    // At least one such row, or the DNS half of the check would go untested without notice
    // (Debian's /etc/hosts names the machine; add a loopback alias to one that does not).
    assert!(
        !names.is_empty(),
        "no name in /etc/hosts (other than localhost) resolves to a non-public address here"
    );
    for n in &names {
        audio(
            "resolves to loopback",
            &format!("http://{n}/a.wav"),
            private,
        );
        audio(
            "resolves to loopback, trailing dot",
            &format!("http://{n}./a.wav"),
            private,
        );
    }
    // The webhook URL goes through the same rules.
    let mut hook = |url: &str, answer: Answer| {
        cases.push(case(
            format!("hook_url {url:?}"),
            Body::Json(with("hook_url", Some(json!(url)))),
            answer,
        ));
    };
    for url in [
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/h",
        "http://0x7f000001/h",
        "http://localhost/h",
        "http://127\u{3002}0\u{3002}0\u{3002}1/h",
        "http://good@10.0.0.1/h",
        "http://[fd00::1]/h",
        "http://100.64.0.1/h",
    ] {
        hook(url, reject422("private_address", "hook_url"));
    }
    for url in [
        "file:///etc/passwd",
        "gopher://93.184.215.14/",
        "data:,x",
        "ftp://93.184.215.14/h",
    ] {
        hook(url, reject422("unsupported_scheme", "hook_url"));
    }
    for n in names.iter().take(1) {
        hook(
            &format!("http://{n}:9/h"),
            reject422("private_address", "hook_url"),
        );
    }
    run_api_table(&app, cases).await;
}
