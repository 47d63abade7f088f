//! Self-tests of the integration-test harness (`tests/common`): the real
//! registry variants, seeding helpers, token issuer, TLS and fault proxy.
//! They do not involve the regfs binary.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use common::proxy::read_response;
use common::*;

#[test]
fn plain_registry_push_and_fetch_back() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("harness/plain", "v1", &[1000, 70_000]);
    let (bytes, ct, digest) = c.get_manifest("harness/plain", "v1");
    assert_eq!(bytes, img.manifest);
    assert_eq!(ct, OCI_MANIFEST);
    assert_eq!(digest, img.digest);
    for l in &img.layers {
        assert_eq!(c.get_blob("harness/plain", &l.digest), l.bytes);
    }
    assert_eq!(c.get_blob("harness/plain", &img.config.digest), img.config.bytes);
    assert_eq!(c.list_tags("harness/plain"), vec!["v1".to_string()]);
    assert_eq!(c.catalog(), vec!["harness/plain".to_string()]);
}

#[test]
fn indexes_and_manifest_lists_are_pushed() {
    let reg = Registry::start();
    let c = reg.client();
    let amd = c.push_random_image("harness/multi", "amd", &[10]);
    let arm = c.push_random_image("harness/multi", "arm", &[20]);
    let idx = c.push_index(
        "harness/multi",
        "oci",
        IndexKind::Oci,
        &[
            (&amd, Platform::new("linux", "amd64", None)),
            (&arm, Platform::new("linux", "arm64", Some("v8"))),
        ],
    );
    let (bytes, ct, digest) = c.get_manifest("harness/multi", "oci");
    assert_eq!(
        (bytes, ct.as_str(), digest),
        (idx.manifest.clone(), OCI_INDEX, idx.digest.clone())
    );

    // Docker lists must reference Docker schema 2 manifests.
    let d1 = c.push_image(
        "harness/multi",
        None,
        DOCKER_MANIFEST,
        image_config("amd64", "d1"),
        vec![random_bytes(30)],
    );
    let list = c.push_index(
        "harness/multi",
        "docker",
        IndexKind::DockerList,
        &[(&d1, Platform::new("linux", "amd64", None))],
    );
    let (_, ct, digest) = c.get_manifest("harness/multi", "docker");
    assert_eq!(ct, DOCKER_LIST);
    assert_eq!(digest, list.digest);
}

#[test]
fn tar_gz_layer_lists_with_tar() {
    let layer = make_tar_gz(&[("etc/hello.txt", b"hello\n"), ("bin/tool", b"#!/bin/sh\n")]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.tgz");
    std::fs::write(&p, &layer).unwrap();
    let out = Command::new("tar").arg("-tzf").arg(&p).output().unwrap();
    assert!(out.status.success());
    let mut names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    assert_eq!(names, vec!["bin/tool", "etc/hello.txt"]);
}

/// Documents distribution 2.8: `_catalog` honours `n`/`last` and sends
/// `Link` (relative URL); `tags/list` ignores `n` and returns every tag.
#[test]
fn distribution_2_8_pagination_behaviour() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("harness/p0", "t0", &[5]);
    for i in 1..5 {
        let repo = format!("harness/p{i}");
        c.push_image(&repo, Some("t"), OCI_MANIFEST, img.config.bytes.clone(), vec![]);
    }
    for i in 1..7 {
        c.push_manifest("harness/p0", &format!("t{i}"), OCI_MANIFEST, &img.manifest);
    }
    let http = reqwest::blocking::Client::new();
    let r = http.get(format!("{}/v2/_catalog?n=2", reg.url())).send().unwrap();
    let link = r.headers().get("link").unwrap().to_str().unwrap().to_string();
    assert_eq!(link, "</v2/_catalog?last=harness%2Fp1&n=2>; rel=\"next\"");
    assert_eq!(c.paged("/v2/_catalog?n=2", "repositories").len(), 5);

    let r = http
        .get(format!("{}/v2/harness/p0/tags/list?n=2", reg.url()))
        .send()
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 7, "2.8 ignores n= on tags/list");

    // The proxy emulates tag pagination.
    let proxy = FaultProxy::start(&reg.host_port());
    proxy.paginate_tags(true);
    let pc = RegistryClient::new(&proxy.url(), None, None);
    let r = http
        .get(format!("{}/v2/harness/p0/tags/list?n=3", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(
        r.headers().get("link").unwrap().to_str().unwrap(),
        "</v2/harness/p0/tags/list?last=t2&n=3>; rel=\"next\""
    );
    let all = pc.paged("/v2/harness/p0/tags/list?n=3", "tags");
    assert_eq!(all, vec!["t0", "t1", "t2", "t3", "t4", "t5", "t6"]);
    assert!(proxy.request_count() >= 4);
}

#[test]
fn htpasswd_registry_requires_credentials() {
    let reg = Registry::start_with(RegistryOptions::htpasswd());
    assert_eq!(reg.client_anonymous().get_status("/v2/").unwrap(), 401);
    let c = reg.client();
    let img = c.push_random_image("harness/basic", "v1", &[100]);
    assert_eq!(c.get_manifest("harness/basic", "v1").2, img.digest);
    let wrong = RegistryClient::new(&reg.url(), Some((TEST_USER.into(), "wrong".into())), None);
    assert_eq!(wrong.manifest_status("harness/basic", "v1"), 401);
}

#[test]
fn token_registry_accepts_issued_tokens() {
    let reg = Registry::start_with(RegistryOptions::token());
    let issuer = reg.issuer().unwrap();
    assert_eq!(reg.client_anonymous().get_status("/v2/").unwrap(), 401);
    let c = reg.client();
    let img = c.push_random_image("harness/token", "v1", &[100]);
    assert_eq!(c.get_manifest("harness/token", "v1").0, img.manifest);
    assert_eq!(c.list_tags("harness/token"), vec!["v1"]);
    assert_eq!(c.catalog(), vec!["harness/token"]);
    assert!(issuer.request_count() >= 2, "issuer saw {}", issuer.request_count());
    let reqs = issuer.requests();
    assert!(reqs.iter().all(|r| r.granted && r.user.as_deref() == Some(TEST_USER)));
    // distribution 2.8 lists a challenge's actions in random order
    // ("pull,push" or "push,pull").
    assert!(reqs.iter().any(|r| r
        .scopes
        .iter()
        .any(|s| { s == "repository:harness/token:pull,push" || s == "repository:harness/token:push,pull" })));
    assert!(reqs.iter().any(|r| r.scopes.iter().any(|s| s == "registry:catalog:*")));

    // Wrong password: the issuer refuses, the registry stays closed.
    let before = issuer.request_count();
    let wrong = RegistryClient::new(&reg.url(), Some((TEST_USER.into(), "nope".into())), None);
    assert_eq!(wrong.manifest_status("harness/token", "v1"), 401);
    assert!(issuer.request_count() > before);
    assert!(!issuer.requests().last().unwrap().granted);

    // Anonymous: refused by default, pull-only when allowed.
    let anon = reg.client_anonymous();
    assert_eq!(anon.manifest_status("harness/token", "v1"), 401);
    issuer.set_options(TokenIssuerOptions {
        anonymous_pull: true,
        ..Default::default()
    });
    let anon = reg.client_anonymous();
    assert_eq!(anon.manifest_status("harness/token", "v1"), 200);

    // A minted token works with curl as well.
    let token = issuer.mint("someone", &["repository:harness/token:pull"]);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{}/v2/harness/token/manifests/v1", reg.url()))
        .arg("-H")
        .arg(format!("Accept: {OCI_MANIFEST}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn tls_registry_with_test_ca() {
    let reg = Registry::start_with(RegistryOptions::tls());
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let c = reg.client();
    let img = c.push_random_image("harness/tls", "v1", &[100]);
    assert_eq!(c.get_manifest("harness/tls", "v1").2, img.digest);
    let ok = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--cacert"])
        .arg(reg.ca_cert().unwrap())
        .arg(format!("{}/v2/", reg.url()))
        .status()
        .unwrap();
    assert!(ok.success(), "curl with the CA");
    let bad = Command::new("curl")
        .args(["-sf", "-o", "/dev/null"])
        .arg(format!("{}/v2/", reg.url()))
        .status()
        .unwrap();
    assert!(!bad.success(), "curl without the CA must fail");
}

#[test]
fn registry_stop_and_start_again_keeps_storage() {
    let mut reg = Registry::start_with(RegistryOptions::default().with_delete());
    let c = reg.client();
    let img = c.push_random_image("harness/restart", "v1", &[10]);
    let pid = reg.pid().unwrap();
    reg.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/exe")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    assert!(TcpStream::connect(reg.host_port()).is_err());
    reg.start_again();
    let c = reg.client();
    assert_eq!(c.get_manifest("harness/restart", "v1").2, img.digest);
    assert_eq!(c.delete_manifest("harness/restart", &img.digest), 202);
}

#[test]
fn fault_proxy_forwards_and_injects() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.host_port());
    // Seeding through the proxy exercises request bodies and Location.
    let c = RegistryClient::new(&proxy.url(), None, None);
    let img = c.push_random_image("harness/proxy", "v1", &[3 * 1024 * 1024]);
    let layer = &img.layers[0];
    assert_eq!(c.get_blob("harness/proxy", &layer.digest), layer.bytes);
    let n0 = proxy.request_count();
    assert!(n0 >= 5);

    // Two 500s then a pass.
    proxy.fail_next(2, 500, Match::path("/blobs/"));
    let url = format!("{}/v2/harness/proxy/blobs/{}", proxy.url(), layer.digest);
    let http = reqwest::blocking::Client::new();
    assert_eq!(http.get(&url).send().unwrap().status(), 500);
    assert_eq!(http.get(&url).send().unwrap().status(), 500);
    assert_eq!(
        http.get(&url).send().unwrap().bytes().unwrap().as_ref(),
        &layer.bytes[..]
    );
    assert_eq!(proxy.pending_faults(), 0);

    // 429 with Retry-After.
    proxy.fail_next(1, 429, Match::any());
    let r = http.get(&url).send().unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");

    // 401 carries a challenge.
    proxy.fail_next(1, 401, Match::any());
    let r = http.get(&url).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());

    // Cut after 1000 body bytes: the client sees a short body and EOF.
    proxy.cut_next_body(1, 1000, Match::method_path("GET", "/blobs/"));
    let mut s = TcpStream::connect(proxy.host_port()).unwrap();
    write!(
        s,
        "GET /v2/harness/proxy/blobs/{} HTTP/1.1\r\nHost: {}\r\n\r\n",
        layer.digest,
        proxy.host_port()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let head = common::http::read_head(&mut r).unwrap().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.content_length(), Some(layer.size()));
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut r, &mut rest);
    assert_eq!(rest.len(), 1000);
    assert_eq!(&rest[..], &layer.bytes[..1000]);

    // Range requests pass through.
    let mut s = TcpStream::connect(proxy.host_port()).unwrap();
    write!(
        s,
        "GET /v2/harness/proxy/blobs/{} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\nConnection: close\r\n\r\n",
        layer.digest
    )
    .unwrap();
    let (head, body) = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(head.status(), 206);
    assert_eq!(body, &layer.bytes[10..20]);
    assert!(proxy.wait_idle(std::time::Duration::from_secs(10)));
    let log = proxy.requests();
    let ranged: Vec<_> = log
        .iter()
        .filter(|r| r.range.as_deref() == Some("bytes=10-19"))
        .collect();
    assert_eq!(ranged.len(), 1, "{log:#?}");
    assert_eq!(ranged[0].byte_range(), Some((10, Some(19))));
    assert_eq!(ranged[0].body_bytes, 10, "body bytes sent are counted");
    let cut: Vec<_> = log
        .iter()
        .filter(|r| r.fault == Some(FaultAction::CutBodyAfter(1000)))
        .collect();
    assert_eq!(cut.len(), 1, "{log:#?}");
    assert_eq!(cut[0].body_bytes, 1000, "a cut body counts what was sent");
    assert!(cut[0].is_blob_get() && cut[0].done);

    // Delay still forwards.
    proxy.set_delay_ms(200);
    assert_eq!(c.get_manifest("harness/proxy", "v1").2, img.digest);
    proxy.set_delay_ms(0);
}

#[test]
fn fault_proxy_in_front_of_stopped_registry_answers_502() {
    let mut reg = Registry::start();
    let proxy = FaultProxy::start(&reg.host_port());
    reg.stop();
    let http = reqwest::blocking::Client::new();
    assert_eq!(http.get(format!("{}/v2/", proxy.url())).send().unwrap().status(), 502);
}

/// The counters the strict parser demands are the ones docs/cli.md lists for
/// `.regfs/stats` (and `ratelimit_*` are documented too).
#[test]
fn stats_counters_are_the_documented_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.starts_with("| `stats` |"))
        .expect("docs/cli.md has a `stats` row");
    let names: Vec<&str> = row
        .split('`')
        .skip(5) // "| ", "stats", " | ", "name value", " counters: "
        .step_by(2)
        .filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) // not `RateLimit-Limit`, `<name> <decimal>`
        .collect();
    let (counters, rest): (Vec<&str>, Vec<&str>) = names.into_iter().partition(|n| !n.starts_with("ratelimit_"));
    assert_eq!(counters, common::stats::COUNTERS, "docs/cli.md `stats` row");
    assert_eq!(
        rest,
        common::stats::RATE_LIMIT,
        "docs/cli.md `stats` row: ratelimit_* lines"
    );
}

#[test]
fn stats_parser_and_mountinfo_helpers() {
    use common::stats::{COUNTERS, RATE_LIMIT};
    let good: String = COUNTERS.iter().enumerate().map(|(i, n)| format!("{n} {i}\n")).collect();
    let s = parse_stats(&good);
    assert_eq!(s.len(), COUNTERS.len());
    assert_eq!(s["requests"], 0);
    assert_eq!(s["bytes_fetched"], 13);
    let rate = |lines: &str| good.replace("cache_blobs ", &format!("{lines}cache_blobs "));
    let with_rate = rate("ratelimit_limit 100\nratelimit_remaining 76\nratelimit_window_seconds 21600\n");
    assert_eq!(parse_stats(&with_rate)["ratelimit_window_seconds"], 21600);
    assert!(try_parse_stats(&rate("ratelimit_limit 100\nratelimit_remaining 76\n")).is_ok());
    // Every way a line can be wrong fails, none is dropped.
    let bad = [
        good.replace("cache_bytes 23\n", "cache_bytes 23\\ncache_limit 24\n"), // a literal \n
        format!("{good}bogus\n"),
        format!("{good}bogus 1\n"),
        good.replace("retries 14", "retries -1"),
        good.replace("retries 14", "retries 14 "),
        good.replace("retries 14", "retries  14"),
        good.replace("retries 14", "retries 0x1"),
        good.replace("retries 14\n", ""),
        good.replace("retries 14\n", "retries 14\nretries 14\n"),
        good.replace("requests 0\nrequests_catalog 1\n", "requests_catalog 1\nrequests 0\n"),
        format!("{good}\n"),
        good.trim_end().to_string(),
        rate("ratelimit_limit 100\n"),
        rate("ratelimit_remaining 1\nratelimit_limit 100\n"),
        format!("ratelimit_limit 100\nratelimit_remaining 1\n{good}"),
        format!("{good}ratelimit_limit 100\nratelimit_remaining 1\n"),
        String::new(),
    ];
    for text in bad {
        assert!(try_parse_stats(&text).is_err(), "accepted:\n{text}");
    }
    assert_eq!(RATE_LIMIT.len(), 3);
    assert!(!is_fuse_mounted(std::path::Path::new("/definitely/not/mounted")));
    let e = std::fs::read("/definitely/not/there").unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
}

/// Programs the scripts run (scripts/lib.sh, demo.sh, bench.sh, test.sh),
/// besides bash builtins; the Rust sources' are found by
/// [`programs_run_by_the_sources`].
const SCRIPT_PROGRAMS: &[&str] = &[
    "awk",
    "cat",
    "cp",
    "curl",
    "cut",
    "date",
    "dd",
    "docker-registry",
    "du",
    "find",
    "fusermount3",
    "grep",
    "gzip",
    "head",
    "jq",
    "ls",
    "mkdir",
    "mktemp",
    "nproc",
    "od",
    "readlink",
    "rm",
    "rmdir",
    "rsync",
    "sed",
    "seq",
    "sha256sum",
    "skopeo",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tar",
    "timeout",
    "tr",
    "wc",
];

/// Every program named by a literal in `Command::new`, `run` (tests only)
/// and `run_filter` calls in tests/ and src/.
fn programs_run_by_the_sources() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = std::collections::BTreeSet::new();
    let mut dirs = vec![root.join("tests"), root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // A literal in `run` calls is a program only in the tests
            // (src/registry/flight.rs runs keyed futures with `run`).
            let in_tests = p.starts_with(root.join("tests"));
            for opener in ["Command::new(\"", "run(\"", "run_filter(\""] {
                if opener == "run(\"" && !in_tests {
                    continue;
                }
                for (at, _) in text.match_indices(opener) {
                    let rest = &text[at + opener.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    let program_like = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
                    if !name.is_empty() && program_like {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The Debian package that ships each program (found in /usr/bin, /bin,
/// /usr/sbin or /sbin, alternatives symlinks such as `awk` followed), by one
/// `dpkg-query -S` over every candidate path.
fn debian_packages_of(programs: &std::collections::BTreeSet<String>) -> std::collections::BTreeMap<String, String> {
    let mut candidates: Vec<(String, String)> = Vec::new();
    for prog in programs {
        for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
            let path = format!("{dir}/{prog}");
            candidates.push((prog.clone(), path.clone()));
            if let Ok(real) = std::fs::canonicalize(&path) {
                candidates.push((prog.clone(), real.display().to_string()));
            }
        }
    }
    let out = Command::new("dpkg-query")
        .arg("-S")
        .args(candidates.iter().map(|(_, p)| p))
        .output()
        .expect("dpkg-query (this suite runs on Debian: scripts/lib.sh)");
    // "pkg[, pkg2]: /path" for each path some package ships; the rest go to stderr.
    let mut owner = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((pkgs, path)) = line.split_once(": ") else {
            continue;
        };
        if pkgs.starts_with("diversion by") {
            continue;
        }
        owner.insert(
            path.trim().to_string(),
            pkgs.split(',').next().unwrap().trim().to_string(),
        );
    }
    let mut found = std::collections::BTreeMap::new();
    for (prog, path) in candidates {
        if let Some(pkg) = owner.get(&path) {
            found.entry(prog).or_insert_with(|| pkg.clone());
        }
    }
    found
}

/// A truly fresh Debian runs the suite after `scripts/lib.sh ensure_packages`:
/// every program the tests, the unit tests and the scripts run must come from
/// a package in `REGFS_PACKAGES` (or an Essential one, always there).
/// ferro-oci-server comes from crates.io (`ensure_ferro`).
#[test]
fn every_program_the_suite_runs_is_installed_by_lib_sh() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib.sh")).unwrap();
    let line = lib
        .lines()
        .find(|l| l.starts_with("REGFS_PACKAGES=("))
        .expect("REGFS_PACKAGES=( in scripts/lib.sh");
    let wanted: Vec<&str> = line["REGFS_PACKAGES=(".len()..line.rfind(')').unwrap()]
        .split_whitespace()
        .collect();
    let mut programs = programs_run_by_the_sources();
    assert!(programs.contains("skopeo") && programs.contains("tar"), "{programs:?}");
    programs.extend(SCRIPT_PROGRAMS.iter().map(|s| s.to_string()));
    programs.insert("mount.fuse3".into()); // run by mount(8) in operations.rs
    programs.remove("ferro-oci-server"); // crates.io, scripts/lib.sh ensure_ferro
    let packages = debian_packages_of(&programs);
    // What the wanted packages pull in (python3 -> python3-minimal, which ships /usr/bin/python3).
    let deps = Command::new("dpkg-query")
        .args(["-W", "-f=${Pre-Depends}, ${Depends}\\n"])
        .args(&wanted)
        .output()
        .expect("dpkg-query");
    let dependencies: std::collections::BTreeSet<String> = String::from_utf8_lossy(&deps.stdout)
        .split([',', '|', '\n'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap().to_string())
        .collect();
    let mut missing = Vec::new();
    for prog in &programs {
        let Some(pkg) = packages.get(prog) else {
            missing.push(format!("{prog}: no Debian package on this machine ships it"));
            continue;
        };
        let essential = Command::new("dpkg-query")
            .args(["-W", "-f=${Essential}", pkg])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
            .unwrap_or(false);
        if !essential && !wanted.contains(&pkg.as_str()) && !dependencies.contains(pkg) {
            missing.push(format!("{prog}: package {pkg} is not in REGFS_PACKAGES"));
        }
    }
    assert!(
        missing.is_empty(),
        "scripts/lib.sh does not install:\n{}",
        missing.join("\n")
    );
}
