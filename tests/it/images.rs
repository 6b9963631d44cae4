//! Images as inputs (issue 13): `layerapply --store DIR IMAGE` reads `oci:`, `oci-archive:` and
//! `docker-archive:` images made by an independent writer (`make_image.py`, and skopeo for the
//! docker-archive). The store's layers, mounted by the kernel, must show what umoci's unpack of
//! the same image shows; every verification failure is one line, exit 1, and commits nothing of
//! the bad layer.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Three layers by GNU tar from trees on disk; `.wh.` files are the OCI markers.
fn layer_tars(root: &Path) -> Vec<PathBuf> {
    let trees = [
        "mkdir -p etc usr/bin var/lib/x && echo base > etc/os && echo sh > usr/bin/sh
         echo a > var/lib/x/a && echo b > var/lib/x/b && ln -s ../usr/bin/sh etc/shell
         ln etc/os etc/os-hard && chmod 4755 usr/bin/sh && setfattr -n user.k -v v etc/os",
        "mkdir -p etc var/lib/x && echo changed > etc/os && : > etc/.wh.shell
         : > var/lib/x/.wh..wh..opq && echo c > var/lib/x/c && mkdir -p opt && echo o > opt/o",
        "mkdir -p usr && : > .wh.opt && echo new > usr/new && mkfifo usr/fifo",
    ];
    tars_from_scripts(root, &trees)
}

/// The layout `layout` (tag `t`) as an oci-archive (GNU tar) and a docker-archive (skopeo,
/// tagged `lk/img:v1`): `(oci-archive, docker-archive)`.
fn archives_of(root: &Path, layout: &Path) -> (PathBuf, PathBuf) {
    let archive = root.join("img.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let saved = root.join("saved.tar");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker-archive:{}:lk/img:v1", saved.display())));
    (archive, saved)
}

/// The three test layers as an image `base` (tag `t`, gzip and plain layers, which umoci 0.4
/// reads): `(layer tars, layout, "oci:LAYOUT:t")`.
fn base_image(root: &Path) -> (Vec<PathBuf>, PathBuf, String) {
    let tars = layer_tars(root);
    let base = make_image(&root.join("base"), &tars, &["gzip", "none", "gzip"], "");
    let base_ref = format!("oci:{}:t", base.display());
    (tars, base, base_ref)
}

fn layerapply_json(args: &[&str]) -> serde_json::Value {
    let out = succeeded_cmd(layerapply().args(args).arg("--json"));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn succeeded_cmd(cmd: &mut Command) -> std::process::Output {
    let out = run_unchecked(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_unchecked(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap()
}

/// Run `cmd`, which must fail as a refused input does: exit 1, one line on stderr (returned).
fn failure(cmd: &mut Command) -> String {
    let out = run_unchecked(cmd);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{cmd:?}: one line: {err}");
    err
}

fn ids(report: &serde_json::Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["chainID"].as_str().unwrap().to_string())
        .collect()
}

fn umoci_view(tmp: &Path, image: &Path, name: &str) -> String {
    let rootfs = tmp.join(format!("umoci-{}", name.replace(['/', ':'], "_")));
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:{name}", image.display()))
        .arg(&rootfs));
    dump(&rootfs, &[])
}

fn store_view(tmp: &Path, report: &serde_json::Value) -> String {
    let m = mount_lowers(tmp, report["lowerdir"].as_str().unwrap(), "");
    dump(&m.path, &[])
}

#[test]
fn every_image_form_gives_the_store_umoci_shows() {
    if !need_root("overlay mounts of an image's store") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    let plain: Vec<String> = tars.iter().map(|p| p.display().to_string()).collect();
    let by_layers = layerapply_json(&[
        "--store",
        root.join("s-layers").to_str().unwrap(),
        &plain[0],
        &plain[1],
        &plain[2],
    ]);
    // umoci 0.4 reads no zstd: its reference image is gzip and plain; zstd comes in the others.
    let good = make_image(&root.join("img"), &tars, &["gzip", "none", "gzip"], "");
    let want = umoci_view(root, &good, "t");
    // --rootfs of the layer files: the same tree.
    let from_files = root.join("rootfs-files");
    succeeded_cmd(layerapply().arg("--rootfs").arg(&from_files).args(&tars));
    assert_same(
        &want,
        &dump(&from_files, &[]),
        "umoci vs --rootfs of the layer files",
    );
    assert_same(
        &want,
        &store_view(root, &by_layers),
        "umoci vs the layers' store",
    );
    // Every form of the same image: the same store ids, the same merged view.
    let sha512 = make_image(
        &root.join("img512"),
        &tars,
        &["gzip/sha512", "none/sha512", "zstd"],
        "",
    );
    let docker = make_image(
        &root.join("imgd"),
        &tars,
        &["zstd", "gzip", "none"],
        r#", "docker": true"#,
    );
    let (archive, saved) = archives_of(root, &good);
    let refs = [
        format!("oci:{}:t", good.display()),
        format!("oci:{}", good.display()),
        format!("oci:{}", sha512.display()),
        format!("oci:{}:t", docker.display()),
        format!("oci-archive:{}:t", archive.display()),
        format!("docker-archive:{}", saved.display()),
        format!("docker-archive:{}:lk/img:v1", saved.display()),
    ];
    for (i, r) in refs.iter().enumerate() {
        let store = root.join(format!("s{i}"));
        let report = layerapply_json(&["--store", store.to_str().unwrap(), r]);
        assert_eq!(ids(&report), ids(&by_layers), "{r}: store ids");
        assert!(
            report["image"]["config"]
                .as_str()
                .unwrap()
                .starts_with("sha256:"),
            "{r}"
        );
        assert_same(
            &want,
            &store_view(root, &report),
            &format!("{r}: umoci vs the store"),
        );
        // The whole stack as one plain tree: what umoci's unpack gives.
        let rootfs = root.join(format!("rootfs{i}"));
        succeeded_cmd(layerapply().arg("--rootfs").arg(&rootfs).arg(r));
        assert_same(
            &want,
            &dump(&rootfs, &[]),
            &format!("{r}: umoci vs --rootfs"),
        );
        // Again: every layer is reused, by chainID, without reading a blob.
        let again = layerapply_json(&["--store", store.to_str().unwrap(), r]);
        assert!(
            again["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["reused"] == true),
            "{r}: {again}"
        );
        // The store records the image and its config.
        let cfg = report["image"]["config"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(store.join(format!(".layerkit/images/{cfg}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["ref"].as_str().unwrap(), r);
        assert_eq!(rec["layers"].as_array().unwrap().len(), 3);
        let config = std::fs::read(store.join(format!(".layerkit/images/{cfg}.config"))).unwrap();
        assert_eq!(
            sha256_hex(&config),
            cfg,
            "{r}: the recorded config is the config"
        );
    }
}

/// The store's layer dirs (ids), sorted.
fn store_ids(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_verification_failure_is_one_line_and_commits_nothing_of_the_bad_layer() {
    if !need_root("store applies") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    let layer0 = layerapply_json(&[
        "--store",
        root.join("s-l0").to_str().unwrap(),
        tars[0].to_str().unwrap(),
    ]);
    let id0 = ids(&layer0)[0].trim_start_matches("sha256:").to_string();
    // (tamper, what stderr must say, whether layer 0 may be committed)
    let cases: &[(&str, &str, bool)] = &[
        (
            r#"{"blob_bytes": 1}"#,
            "blob does not match its descriptor",
            true,
        ),
        (
            r#"{"blob_size": 1}"#,
            "blob does not match its descriptor",
            true,
        ),
        (r#"{"diff_id": 1}"#, "layer does not match its diffID", true),
        (r#"{"extra_diff_id": true}"#, "diff_ids", false),
        (r#"{"missing_blob": 1}"#, "missing from the image", false),
        (r#"{"schema1": true}"#, "schema1", false),
        (
            r#"{"layer_media": [1, "application/x-foo"]}"#,
            "unknown layer media type",
            false,
        ),
    ];
    for (i, (tamper, says, lower_ok)) in cases.iter().enumerate() {
        let img = make_image(
            &root.join(format!("bad{i}")),
            &tars,
            &["none", "none", "none"],
            &format!(r#", "tamper": {tamper}"#),
        );
        let store = root.join(format!("s{i}"));
        let err = failure(
            layerapply()
                .arg("--store")
                .arg(&store)
                .arg(format!("oci:{}:t", img.display())),
        );
        assert_eq!(err.lines().count(), 1, "{tamper}: one line: {err}");
        assert!(err.contains(says), "{tamper}: {err}");
        assert!(
            err.contains(&format!("oci:{}:t", img.display())),
            "{tamper}: names the image: {err}"
        );
        let have = store_ids(&store);
        if *lower_ok {
            assert!(
                have.is_empty() || have == [id0.clone()],
                "{tamper}: {have:?}"
            );
            if tamper.contains(": 1") {
                assert!(err.contains("layer 1"), "{tamper}: names the blob: {err}");
            }
        } else {
            assert!(have.is_empty(), "{tamper}: nothing committed: {have:?}");
        }
        // --rootfs verifies as it reads too, and leaves nothing.
        let rootfs = root.join(format!("rootfs{i}"));
        let err = failure(
            layerapply()
                .arg("--rootfs")
                .arg(&rootfs)
                .arg(format!("oci:{}:t", img.display())),
        );
        assert!(err.contains(says), "--rootfs {tamper}: {err}");
        assert!(!rootfs.exists(), "--rootfs {tamper}: no tree left");
        let staging = store.join(".layerkit/staging");
        if staging.exists() {
            assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "{tamper}");
        }
    }
}

#[test]
fn platforms_and_refs_are_chosen_or_listed() {
    if !need_root("store applies") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    let multi = make_image(
        &root.join("multi"),
        &tars[..1],
        &["gzip"],
        r#", "platforms": [["linux", "arm64", "v8"], ["linux", "amd64"]]"#,
    );
    let arch_of = |report: &serde_json::Value| -> String {
        let cfg = report["image"]["config"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let bytes = std::fs::read(multi.join("blobs/sha256").join(cfg)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["architecture"].as_str().unwrap().to_string()
    };
    let r = format!("oci:{}:t", multi.display());
    let host = layerapply_json(&["--store", root.join("s1").to_str().unwrap(), &r]);
    assert_eq!(arch_of(&host), "amd64", "the host's platform by default");
    let arm = layerapply_json(&[
        "--store",
        root.join("s2").to_str().unwrap(),
        "--platform",
        "linux/arm64",
        &r,
    ]);
    assert_eq!(arch_of(&arm), "arm64");
    let err = failure(
        layerapply()
            .args([
                "--store",
                root.join("s3").to_str().unwrap(),
                "--platform",
                "linux/s390x",
            ])
            .arg(&r),
    );
    assert!(
        err.contains("linux/arm64/v8") && err.contains("linux/amd64"),
        "{err}"
    );

    // squash and layerdiff --base choose the same way.
    let sq = root.join("sq");
    succeeded_cmd(
        Command::new(env!("CARGO_BIN_EXE_layerkit"))
            .args(["squash", &r, "--platform", "linux/arm64", "-o"])
            .arg(format!("oci:{}:s", sq.display())),
    );
    let upper = root.join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(upper.join("f"), b"f").unwrap();
    let dd = root.join("dd");
    succeeded_cmd(
        layerdiff()
            .arg(&upper)
            .args(["--base", &r, "--platform", "linux/arm64", "-o"])
            .arg(format!("oci:{}:d", dd.display())),
    );
    for (layout, name) in [(&sq, "s"), (&dd, "d")] {
        let cfg = config_of(layout, name);
        assert_eq!(cfg["architecture"], "arm64", "{}", layout.display());
    }
    let two = make_image(
        &root.join("two"),
        &tars[..1],
        &["none"],
        r#", "refs": ["a", "b"]"#,
    );
    let err = failure(
        layerapply()
            .args(["--store", root.join("s4").to_str().unwrap()])
            .arg(format!("oci:{}", two.display())),
    );
    assert!(err.contains("a, b"), "lists the refs: {err}");
    layerapply_json(&[
        "--store",
        root.join("s5").to_str().unwrap(),
        &format!("oci:{}:b", two.display()),
    ]);
    let out = run_unchecked(
        layerapply()
            .args(["--store", root.join("s6").to_str().unwrap()])
            .arg(format!("oci:{}:zz", two.display())),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("\"zz\"") && err.contains("a, b"),
        "{err}"
    );
}

#[test]
fn an_image_given_as_a_layer_is_refused_with_the_right_prefix() {
    if !need_root("store applies") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    let layout = make_image(&root.join("img"), &tars, &["gzip", "none", "none"], "");
    let (archive, saved) = archives_of(root, &layout);
    for (what, prefix) in [
        (&layout, "oci:"),
        (&archive, "oci-archive:"),
        (&saved, "docker-archive:"),
    ] {
        let runs: Vec<(&str, Command)> = vec![
            ("--into", {
                let mut c = layerapply();
                c.arg("--into").arg(root.join("into")).arg(what);
                c
            }),
            ("--store", {
                let mut c = layerapply();
                c.arg("--store")
                    .arg(root.join("store"))
                    .arg(&tars[0])
                    .arg(what);
                c
            }),
            ("squash", {
                let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
                c.arg("squash").arg(what).arg("-o").arg(root.join("sq.tar"));
                c
            }),
        ];
        for (how, mut cmd) in runs {
            let out = run_unchecked(&mut cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{how} {}: {err}",
                what.display()
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains(&format!("{prefix}{}", what.display())),
                "{how}: names the prefix: {err}"
            );
            assert!(!root.join("into").exists(), "{how}: nothing left");
            assert!(!root.join("sq.tar").exists(), "{how}: nothing left");
            // The layer file before it may be committed; nothing of the image is.
            let ids = store_ids(&root.join("store"));
            assert!(ids.len() <= 1, "{how}: {ids:?}");
        }
    }
    // A layer that only holds files of those names at its root is a layer.
    let odd = root.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(
        odd.join("manifest.json"),
        br#"{"name": "my-app", "version": 2}"#,
    )
    .unwrap();
    std::fs::write(odd.join("oci-layout"), b"not json").unwrap();
    let odd_tar = root.join("odd.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&odd)
        .arg("-cf")
        .arg(&odd_tar)
        .arg("."));
    succeeded_cmd(
        layerapply()
            .arg("--into")
            .arg(root.join("odd-out"))
            .arg(&odd_tar),
    );
    assert_eq!(
        std::fs::read(root.join("odd-out/manifest.json")).unwrap(),
        br#"{"name": "my-app", "version": 2}"#
    );
    succeeded_cmd(
        Command::new(env!("CARGO_BIN_EXE_layerkit"))
            .arg("squash")
            .arg(&odd_tar)
            .arg("-o")
            .arg(root.join("odd-sq.tar")),
    );
}

fn skopeo_inspect(r: &str) -> serde_json::Value {
    let out = succeeded_cmd(Command::new("skopeo").args(["inspect", r]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn skopeo_inspect_config(r: &str) -> serde_json::Value {
    let out = succeeded_cmd(Command::new("skopeo").args(["inspect", "--config", r]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config_of(layout: &Path, name: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("no ref {name} in {index}"));
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&m["digest"])).unwrap()).unwrap();
    serde_json::from_slice(&std::fs::read(blob(&manifest["config"]["digest"])).unwrap()).unwrap()
}

#[test]
fn layerdiff_writes_an_image_that_skopeo_and_umoci_read() {
    if !need_root("layerdiff reads trusted.overlay.* markers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base, base_ref) = base_image(root);
    let upper = root.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    sh(
        &upper,
        "echo hello > etc/greeting && mknod etc/os-hard c 0 0",
    );
    let diff_to = |out: &str, extra: &[&str]| -> serde_json::Value {
        let o = succeeded_cmd(
            layerdiff()
                .arg(&upper)
                .args(["-o", out, "--json"])
                .args(extra)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let out = root.join("out");
    let r = diff_to(
        &format!("oci:{}:v1", out.display()),
        &["--base", &base_ref, "--message", "hi"],
    );
    assert!(
        r["manifest"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{r}"
    );
    // skopeo reads it (and checks every digest when copying it).
    let inspected = skopeo_inspect(&format!("oci:{}:v1", out.display()));
    let base_inspected = skopeo_inspect(&base_ref);
    let layers = inspected["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(
        &layers[..3],
        base_inspected["Layers"].as_array().unwrap().as_slice(),
        "base blobs kept"
    );
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:v1", out.display()))
        .arg(format!("oci:{}:copy", root.join("copied").display())));
    // The config: the base's, plus one diffID and one history entry for the new layer.
    let cfg = config_of(&out, "v1");
    let ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[3], r["layer"]["diffID"]);
    let history = cfg["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[3]["comment"], "hi");
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    // Two independent readers agree on the image's tree, which has the diff applied.
    let want = umoci_view(root, &out, "v1");
    let rootfs = root.join("rootfs");
    succeeded_cmd(
        layerapply()
            .arg("--rootfs")
            .arg(&rootfs)
            .arg(format!("oci:{}:v1", out.display())),
    );
    assert_same(
        &want,
        &dump(&rootfs, &[]),
        "umoci vs --rootfs of the new image",
    );
    assert_eq!(
        std::fs::read(rootfs.join("etc/greeting")).unwrap(),
        b"hello\n"
    );
    assert!(!rootfs.join("etc/os-hard").exists(), "the whiteout applied");
    // Same inputs and time: the same image, byte for byte.
    let out2 = root.join("out2");
    let r2 = diff_to(
        &format!("oci:{}:v1", out2.display()),
        &["--base", &base_ref, "--message", "hi"],
    );
    assert_eq!(r["manifest"], r2["manifest"], "deterministic manifest");
    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        std::fs::read(out2.join("index.json")).unwrap()
    );
    // Into the base's own layout under a new ref: the old ref stays.
    diff_to(
        &format!("oci:{}:v2", base.display()),
        &["--base", &base_ref],
    );
    let index = std::fs::read_to_string(base.join("index.json")).unwrap();
    assert!(
        index.contains("\"t\"") && index.contains("\"v2\""),
        "{index}"
    );
    skopeo_inspect(&format!("oci:{}:v2", base.display()));
    // No base: a one-layer image with a minimal config for this host.
    let solo = root.join("solo");
    diff_to(&format!("oci:{}", solo.display()), &[]);
    let cfg = config_of(&solo, "latest");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(cfg["os"], "linux");
    skopeo_inspect(&format!("oci:{}:latest", solo.display()));
}

#[test]
fn squash_of_an_image_keeps_the_lower_blobs_and_what_the_image_shows() {
    if !need_root("umoci unpacks owners") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (tars, base, base_ref) = base_image(root);
    let want = umoci_view(root, &base, "t");
    let base_layers = skopeo_inspect(&base_ref)["Layers"].clone();
    let squash_to = |out: &str, extra: &[&str]| -> serde_json::Value {
        let o = succeeded_cmd(
            Command::new(env!("CARGO_BIN_EXE_layerkit"))
                .args(["squash", &base_ref, "-o", out, "--json"])
                .args(extra)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // The top two layers into one; the bottom one kept as it was.
    let out = root.join("out");
    let r = squash_to(
        &format!("oci:{}:sq", out.display()),
        &["--from", "-2", "--message", "m"],
    );
    assert_eq!(r["kept"], 1);
    assert!(
        r["layer"]["mediaType"].as_str().unwrap().ends_with("+gzip"),
        "the top layer's compression: {r}"
    );
    let layers = skopeo_inspect(&format!("oci:{}:sq", out.display()))["Layers"].clone();
    assert_eq!(layers.as_array().unwrap().len(), 2);
    assert_eq!(layers[0], base_layers[0], "the bottom blob is the base's");
    assert_same(
        &want,
        &umoci_view(root, &out, "sq"),
        "umoci: squashed image vs the original",
    );
    let cfg = config_of(&out, "sq");
    let base_cfg = config_of(&base, "t");
    assert_eq!(
        cfg["rootfs"]["diff_ids"][0],
        base_cfg["rootfs"]["diff_ids"][0]
    );
    assert_eq!(cfg["rootfs"]["diff_ids"][1], r["layer"]["diffID"]);
    let history = cfg["history"].as_array().unwrap();
    let non_empty: Vec<_> = history
        .iter()
        .filter(|h| h["empty_layer"] != true)
        .collect();
    assert_eq!(
        non_empty.len(),
        2,
        "history pairs with the layers: {history:?}"
    );
    assert_eq!(non_empty[0], &base_cfg["history"][0]);
    assert_eq!(non_empty[1]["comment"], "m");
    // --from 0: one flattened layer, no markers left in it.
    let flat = root.join("flat");
    let r = squash_to(
        &format!("oci:{}:f", flat.display()),
        &["--from", "0", "-c", "none"],
    );
    let blob = flat.join("blobs/sha256").join(
        r["layer"]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let names: Vec<String> = tar_members(&blob).into_iter().map(|m| m.name).collect();
    assert!(!names.iter().any(|n| n.contains(".wh.")), "{names:?}");
    assert_same(
        &want,
        &umoci_view(root, &flat, "f"),
        "umoci: flattened image vs the original",
    );
    // -o FILE: just the squashed layer.
    let file = root.join("top.tar");
    let r = squash_to(file.to_str().unwrap(), &["--from", "1"]);
    assert_eq!(r["diffID"], sha256_file(&file));
    // A tampered layer in the range is refused as it is read.
    let bad = make_image(
        &root.join("bad"),
        &tars,
        &["none", "none", "none"],
        r#", "tamper": {"diff_id": 2}"#,
    );
    let o = run_unchecked(
        Command::new(env!("CARGO_BIN_EXE_layerkit"))
            .args([
                "squash",
                &format!("oci:{}:t", bad.display()),
                "--from",
                "-2",
                "-o",
            ])
            .arg(format!("oci:{}:x", root.join("badout").display())),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("layer does not match its diffID"), "{err}");
}

#[test]
fn image_archives_written_are_read_by_skopeo_and_are_reproducible() {
    if !need_root("layerdiff reads trusted.overlay.* markers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, _, base_ref) = base_image(root);
    let upper = root.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    sh(&upper, "echo hello > etc/greeting");
    let diff_to = |out: &str| {
        succeeded_cmd(
            layerdiff()
                .arg(&upper)
                .args(["-o", out, "--base", &base_ref])
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
    };
    let oa = root.join("img.oci.tar");
    let oa2 = root.join("img2.oci.tar");
    let da = root.join("img.docker.tar");
    let da2 = root.join("img2.docker.tar");
    diff_to(&format!("oci-archive:{}:v1", oa.display()));
    diff_to(&format!("oci-archive:{}:v1", oa2.display()));
    diff_to(&format!("docker-archive:{}:lk/up:v1", da.display()));
    diff_to(&format!("docker-archive:{}:lk/up:v1", da2.display()));
    assert_eq!(
        sha256_file(&oa),
        sha256_file(&oa2),
        "oci-archive: byte-identical"
    );
    assert_eq!(
        sha256_file(&da),
        sha256_file(&da2),
        "docker-archive: byte-identical"
    );
    // Nothing left beside them but the archives.
    let mut left: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    left.sort();
    assert!(left.is_empty(), "temporary names left: {left:?}");
    // skopeo reads both (copying checks every digest); umoci and layerkit agree on the tree.
    for (src, name) in [
        (format!("oci-archive:{}:v1", oa.display()), "o"),
        (format!("docker-archive:{}:lk/up:v1", da.display()), "d"),
    ] {
        let copy = root.join(format!("copy-{name}"));
        run(Command::new("skopeo")
            .args(["copy", "-q", &src])
            .arg(format!("oci:{}:c", copy.display())));
        assert_eq!(
            skopeo_inspect(&src)["Layers"].as_array().unwrap().len(),
            4,
            "{src}"
        );
        let want = umoci_view(root, &copy, "c");
        let rootfs = root.join(format!("rootfs-{name}"));
        succeeded_cmd(layerapply().arg("--rootfs").arg(&rootfs).arg(&src));
        assert_same(
            &want,
            &dump(&rootfs, &[]),
            &format!("{src}: umoci vs --rootfs"),
        );
        assert_eq!(
            std::fs::read(rootfs.join("etc/greeting")).unwrap(),
            b"hello\n"
        );
    }
    // podman loads both into a private storage root, under the names they carry, with our
    // config (its image id) and diffIDs.
    // (podman wants a runroot path under 50 bytes.)
    let storage = tempfile::Builder::new()
        .prefix("lk-podman")
        .tempdir_in("/tmp")
        .unwrap();
    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(storage.path().join("root"))
            .arg("--runroot")
            .arg(storage.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    for (archive, named) in [(&da, "localhost/lk/up:v1"), (&oa, "localhost/v1:latest")] {
        let o = succeeded_cmd(podman().arg("load").arg("-i").arg(archive));
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(said.contains(named), "{}: {said}", archive.display());
        let o = succeeded_cmd(podman().args(["image", "inspect", named]));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let src = if archive == &da {
            format!("docker-archive:{}:lk/up:v1", da.display())
        } else {
            format!("oci-archive:{}:v1", oa.display())
        };
        let ours = skopeo_inspect_config(&src);
        assert_eq!(
            got[0]["RootFS"]["Layers"], ours["rootfs"]["diff_ids"],
            "{named}: diffIDs"
        );
    }
    // squash writes archives too.
    let sq = root.join("sq.oci.tar");
    succeeded_cmd(
        Command::new(env!("CARGO_BIN_EXE_layerkit"))
            .args(["squash", &base_ref, "--from", "-2", "-o"])
            .arg(format!("oci-archive:{}:s", sq.display())),
    );
    assert_eq!(
        skopeo_inspect(&format!("oci-archive:{}:s", sq.display()))["Layers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn bases_of_every_form_are_extended_with_their_blobs_as_they_are() {
    if !need_root("layerdiff reads trusted.overlay.* markers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    // A sha512 layout, and a classic `docker save` tar whose layers are gzip blobs named by path
    // only (docker and podman load such layers; nothing names their digest).
    let sha512 = make_image(
        &root.join("sha512"),
        &tars,
        &["gzip/sha512", "none/sha512", "gzip/sha512"],
        "",
    );
    let classic = root.join("classic.tar");
    make_image(
        &root.join("for-classic"),
        &tars,
        &["gzip", "none", "gzip"],
        &format!(r#", "docker_archive": "{}""#, classic.display()),
    );
    let upper = root.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    sh(&upper, "echo hello > etc/greeting");
    let blob_bytes = |layout: &Path, d: &str| {
        let (alg, hex) = d.split_once(':').unwrap();
        std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap()
    };
    for (i, base) in [
        format!("oci:{}:t", sha512.display()),
        format!("docker-archive:{}", classic.display()),
    ]
    .iter()
    .enumerate()
    {
        let out = root.join(format!("out{i}"));
        let new = format!("oci:{}:v1", out.display());
        succeeded_cmd(layerdiff().arg(&upper).args(["-o", &new, "--base", base]));
        // Squash of the same base keeps the bottom two the same way.
        let sq = format!("oci:{}:sq", out.display());
        succeeded_cmd(
            Command::new(env!("CARGO_BIN_EXE_layerkit"))
                .args(["squash", base, "--from", "-1", "-o", &sq]),
        );
        for r in [&new, &sq] {
            // skopeo checks every digest as it copies.
            run(Command::new("skopeo")
                .args(["copy", "-q", r])
                .arg(format!("oci:{}:c", root.join(format!("copy{i}")).display())));
            let m = manifest_of(&out, r.rsplit(':').next().unwrap());
            let layers = m["layers"].as_array().unwrap();
            // The base's blobs, byte for byte (the source's bytes; a sha512 is named by the
            // sha256 of the same bytes, this writer's layouts being sha256).
            let source_layers: Vec<Vec<u8>> = if i == 0 {
                manifest_of(&sha512, "t")["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| blob_bytes(&sha512, d["digest"].as_str().unwrap()))
                    .collect()
            } else {
                let for_classic = root.join("for-classic");
                manifest_of(&for_classic, "t")["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| blob_bytes(&for_classic, d["digest"].as_str().unwrap()))
                    .collect()
            };
            let kept = if r == &new { 3 } else { 2 };
            for (k, want) in source_layers.iter().take(kept).enumerate() {
                let d = layers[k]["digest"].as_str().unwrap();
                assert_eq!(&blob_bytes(&out, d), want, "{base} -> {r}: layer {k}");
            }
            // What the image shows: umoci and layerkit agree, with the diff or squash applied.
            let tag = r.rsplit(':').next().unwrap();
            let want = umoci_view(root, &out, tag);
            let rootfs = root.join(format!("rootfs{i}-{tag}"));
            succeeded_cmd(layerapply().arg("--rootfs").arg(&rootfs).arg(r));
            assert_same(&want, &dump(&rootfs, &[]), &format!("{base} -> {r}"));
        }
    }
}

#[test]
fn a_failed_image_write_leaves_no_layout_behind() {
    if !need_root("layerdiff reads trusted.overlay.* markers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    // The base's layer 1 fails its digest only when it is copied into the new layout.
    let bad = make_image(
        &root.join("bad"),
        &tars,
        &["none", "none", "none"],
        r#", "tamper": {"blob_bytes": 1}"#,
    );
    let bad_ref = format!("oci:{}:t", bad.display());
    let upper = root.join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    sh(&upper, "echo hello > greeting");
    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for out in [root.join("new"), empty.clone(), root.join("deeper/new")] {
        let target = format!("oci:{}:v1", out.display());
        let err = failure(
            layerdiff()
                .arg(&upper)
                .args(["-o", &target, "--base", &bad_ref]),
        );
        assert!(
            err.contains("blob does not match its descriptor") || err.contains("digest"),
            "{err}"
        );
        let err = failure(
            Command::new(env!("CARGO_BIN_EXE_layerkit"))
                .args(["squash", &bad_ref, "--from", "-1", "-o", &target]),
        );
        assert!(err.contains("layer 1"), "{err}");
        if out == empty {
            assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "still empty");
        } else {
            assert!(!out.exists(), "{} made", out.display());
        }
        let parent = out.parent().unwrap();
        let left: Vec<_> = std::fs::read_dir(parent)
            .map(|d| {
                d.map(|e| e.unwrap().file_name())
                    .filter(|n| n.to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "temporary names left: {left:?}");
    }
}

/// The manifest that `name` points at in the layout.
fn manifest_of(layout: &Path, name: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (alg, hex) = d.split_once(':').unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap())
        .unwrap()
}

#[test]
fn progress_shows_on_a_terminal_only_and_not_with_q() {
    if !need_root("--rootfs sets owners") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, _, base_ref) = base_image(root);
    let bin = env!("CARGO_BIN_EXE_layerapply");
    // `script` gives the command a terminal, and copies what it writes there to our stdout.
    let on_tty = |name: &str, quiet: &str| -> String {
        let cmd = format!(
            "{bin} {quiet} --rootfs {} {base_ref}",
            root.join(name).display()
        );
        let o = succeeded_cmd(Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let shown = on_tty("a", "");
    assert!(shown.contains("layers 3/3 read"), "{shown:?}");
    assert!(shown.ends_with("\r\n"), "the line is ended: {shown:?}");
    assert_eq!(on_tty("b", "-q"), "", "-q: nothing");
    // Not a terminal: nothing on stderr.
    let o = succeeded_cmd(
        layerapply()
            .arg("--rootfs")
            .arg(root.join("c"))
            .arg(&base_ref),
    );
    assert!(
        o.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&o.stderr)
    );
}
