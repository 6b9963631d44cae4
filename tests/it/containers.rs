//! The container loop on the store, through the kernel: `layerkit create` / `mount` / `commit` /
//! `inspect` / `ls` / `rm` / `rmi` / `prune`. Every view is checked against the truth: the
//! kernel's merged view of the container, hand-made overlay mounts of the dirs `inspect` and
//! `layerapply` print, umoci's unpack and skopeo's copy of committed images, GNU tar and Python's
//! tarfile for committed layers; never against layerkit reading what it wrote.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

fn layerkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layerkit"))
}

/// stdout of `cmd`, which must succeed, without its trailing newline.
fn stdout_of(cmd: &mut Command) -> String {
    let o = run(cmd);
    String::from_utf8(o.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// Run `cmd`, which must be refused: exit `code`, exactly one line on stderr (returned).
fn refused(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?} must be refused with exit {code}; stdout {:?}, stderr {err:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        err.lines().count(),
        1,
        "{cmd:?}: one line on stderr: {err:?}"
    );
    err
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A store driven through the `layerkit` CLI.
struct Store {
    path: PathBuf,
}

impl Store {
    fn new(path: PathBuf) -> Store {
        Store { path }
    }

    /// `layerkit VERB --store DIR`.
    fn lk(&self, verb: &str) -> Command {
        let mut c = layerkit();
        c.arg(verb).arg("--store").arg(&self.path);
        c
    }

    /// `layerkit create --store DIR --name NAME FROM...`: the id it prints (64 hex).
    fn create<I, S>(&self, name: &str, from: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let id = stdout_of(self.lk("create").args(["--name", name]).args(from));
        assert!(is_hex64(&id), "create prints a 64-hex id: {id:?}");
        id
    }

    /// `layerkit mount`: the merged dir it prints, with a guard that unmounts it even if the test
    /// panics.
    fn mount(&self, c: &str) -> (PathBuf, Mount) {
        let merged = PathBuf::from(stdout_of(self.lk("mount").arg(c)));
        let guard = Mount::guard(&merged);
        (merged, guard)
    }

    fn umount(&self, c: &str) {
        run(self.lk("umount").arg(c));
    }

    fn inspect(&self, c: &str) -> Value {
        serde_json::from_str(&stdout_of(self.lk("inspect").arg(c))).unwrap()
    }

    fn ls(&self) -> Value {
        serde_json::from_str(&stdout_of(self.lk("ls").arg("--json"))).unwrap()
    }

    /// `layerkit prune`: the ids of the layers it says it deleted, after checking the shape of
    /// its report ("deleted layer ID (SIZE)", "removed ...", a last "freed ..." line).
    fn prune(&self) -> BTreeSet<String> {
        let out = stdout_of(&mut self.lk("prune"));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines.last().is_some_and(|l| l.starts_with("freed ")),
            "prune ends with what it freed: {out}"
        );
        let mut ids = BTreeSet::new();
        for l in &lines[..lines.len() - 1] {
            if let Some(rest) = l.strip_prefix("deleted layer ") {
                let id = rest.split_whitespace().next().unwrap();
                assert!(is_hex64(id), "{l}");
                ids.insert(id.to_string());
            } else {
                assert!(l.starts_with("removed "), "prune: unexpected line {l:?}");
            }
        }
        ids
    }

    /// Layer ids in `ls --json`.
    fn layer_ids(&self) -> BTreeSet<String> {
        self.ls()["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The `l/` entries.
    fn links(&self) -> Vec<String> {
        listing(&self.path.join("l"))
    }
}

/// `layerapply --store DIR --json ARGS`: (printed lowerdir, store ids bottom first).
fn apply_store(store: &Path, args: &[&OsStr]) -> (String, Vec<String>) {
    let out = stdout_of(
        layerapply()
            .arg("--store")
            .arg(store)
            .arg("--json")
            .args(args),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["chainID"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    (v["lowerdir"].as_str().unwrap().to_string(), ids)
}

/// mountinfo's octal escapes (`\040` for a space, ...) undone.
fn unoctal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The super options of every overlay mount at `mp` (per /proc/self/mountinfo).
fn overlay_mounts_at(mp: &Path) -> Vec<String> {
    let want = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = unoctal(left.split(' ').nth(4)?);
            let mut r = right.split(' ');
            let (fstype, _source, opts) = (r.next()?, r.next()?, r.next()?);
            (fstype == "overlay" && Path::new(&point) == want).then(|| opts.to_string())
        })
        .collect()
}

/// The value of `key=` in a mount's super options.
fn opt<'a>(opts: &'a str, key: &str) -> Option<&'a str> {
    let key = format!("{key}=");
    opts.split(',').find_map(|o| o.strip_prefix(key.as_str()))
}

/// `mount -t overlay overlay -o OPTS MP` run in `cwd`; a guard unmounts it.
fn mount_by_hand(opts: &str, mp: &Path, cwd: &Path) -> Mount {
    std::fs::create_dir_all(mp).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(mp)
        .current_dir(cwd));
    Mount::guard(mp)
}

/// The placeholders of the init layer, and `dev` above three of them: none of them is in the
/// test images of [`base_image`].
const PLACEHOLDERS: &[&str] = &[
    ".dockerenv",
    "dev",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc",
    "sys",
];

/// The line of `path` in a `dump.py` text.
fn line_of<'a>(dump: &'a str, path: &str) -> Option<&'a str> {
    dump.lines().find(|l| l.split(' ').next() == Some(path))
}

/// A line of a dump without its ` mtime=` field (placeholders are made "now").
fn sans_mtime(line: &str) -> String {
    line.split(' ')
        .filter(|f| !f.starts_with("mtime="))
        .collect::<Vec<_>>()
        .join(" ")
}

const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Asserts that `dump` shows every placeholder as docker's initlayer makes them.
fn assert_placeholders(dump: &str, what: &str) {
    for p in ["dev", "dev/pts", "dev/shm", "proc", "sys"] {
        let l = line_of(dump, p).unwrap_or_else(|| panic!("{what}: no {p}:\n{dump}"));
        assert!(l.starts_with(&format!("{p} d 0755 0 0")), "{what}: {l}");
    }
    for p in [
        ".dockerenv",
        "dev/console",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
    ] {
        let l = line_of(dump, p).unwrap_or_else(|| panic!("{what}: no {p}:\n{dump}"));
        assert_eq!(
            sans_mtime(l),
            format!("{p} f 0755 0 0 0 {EMPTY_SHA}"),
            "{what}: an empty 0755 file"
        );
    }
    assert_eq!(
        line_of(dump, "etc/mtab"),
        Some("etc/mtab l 0777 0 0 -> /proc/mounts"),
        "{what}"
    );
}

/// `dump` without the placeholders' lines (each of which must be there), nor those of `made`:
/// the dirs above them that the image lacks (`etc` for an image without one; the init layer
/// makes it, as docker's does).
fn without_placeholders(dump: &str, made: &[&str]) -> String {
    assert_placeholders(dump, "the merged view");
    for p in made {
        let l = line_of(dump, p).unwrap_or_else(|| panic!("no {p} in the merged view"));
        assert!(l.starts_with(&format!("{p} d 0755 0 0 ")), "{l}");
    }
    dump.lines()
        .map(|l| (l, l.split(' ').next().unwrap()))
        .filter(|(_, p)| !PLACEHOLDERS.contains(p) && !made.contains(p))
        .map(|(l, _)| format!("{l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The test image (as images.rs builds its own: GNU tar layers, make_image.py layout)

/// Three layers by GNU tar from trees on disk; `.wh.` files are the OCI markers. Nothing at the
/// placeholders' paths, and no `/dev`.
const TREES: [&str; 3] = [
    "mkdir -p etc usr/bin var/lib/x opt/tree/sub home/u
     echo base > etc/os && echo p > etc/pair1 && ln etc/pair1 etc/pair2
     ln -s ../usr/bin/sh etc/shell && echo sh > usr/bin/sh && chmod 4755 usr/bin/sh
     echo a > var/lib/x/a && echo b > var/lib/x/b && seq 1 20000 > var/big
     echo t > opt/tree/t && echo s > opt/tree/sub/s && setfattr -n user.tree -v 1 opt/tree
     echo rc > home/u/.rc && chown -R 1000:1000 home/u && chmod 0750 home/u
     find . -exec touch -h -d @1400000000 {} +",
    "mkdir -p etc var/lib/x && echo changed > etc/os && setfattr -n user.k -v v etc/os
     : > etc/.wh.shell && : > var/lib/x/.wh..wh..opq && echo c > var/lib/x/c
     find . -exec touch -h -d @1500000000 {} +",
    "mkdir -p usr && echo new > usr/new && mkfifo usr/fifo
     find . -exec touch -h -d @1600000000 {} +",
];

/// What a container does through `merged`: writes, deletes (a file, a dir), renames (files, a
/// lower dir, an upper dir), chmod/chown, xattrs, hardlinks (new, to a copied-up file, breaking
/// a lower pair), a symlink, a fifo, a dir deleted and made again.
const CHANGES: &str = "
echo more >> etc/os && setfattr -x user.k etc/os && ln etc/os etc/os-link
echo x >> etc/pair1
echo new > newfile && setfattr -n user.new -v 1 newfile && chown 7:8 newfile
touch -d @1700000000 newfile && ln newfile newfile-link
rm usr/new
rm -rf var/lib/x
mv opt/tree opt/tree2
rm -rf opt/tree2/sub && mkdir opt/tree2/sub && echo n > opt/tree2/sub/n
mkdir -p made/inner && echo i > made/inner/i && mv made made2
mv usr/bin/sh usr/bin/sh.renamed
chmod 0600 var/big
chmod 0711 home/u
ln -s /etc/os abs-link
mkfifo fifo2
";

fn layer_tars(root: &Path) -> Vec<PathBuf> {
    tars_from_scripts(root, &TREES)
}

/// The three layers as the image `ROOT/base` (tag `t`; gzip and plain layers, which umoci 0.4
/// reads): (layer tars, layout).
fn base_image(root: &Path) -> (Vec<PathBuf>, PathBuf) {
    let tars = layer_tars(root);
    let layout = make_image(&root.join("base"), &tars, &["gzip", "none", "gzip"], "");
    (tars, layout)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

/// (manifest digest, manifest, config) of the image tagged `name` in an OCI layout, read here.
fn layout_image(layout: &Path, name: &str) -> (String, Value, Value) {
    let index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{}: no image {name}: {index}", layout.display()))
        .clone();
    let digest = entry["digest"].as_str().unwrap().to_string();
    let manifest = read_json(&blob(layout, &digest));
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    (digest, manifest, config)
}

/// `umoci raw unpack` of `image` (`LAYOUT:REF`), dumped.
fn umoci_view(tmp: &Path, image: &str, name: &str) -> String {
    let rootfs = tmp.join(format!("umoci-{name}"));
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image", image])
        .arg(&rootfs));
    dump_tree(&rootfs)
}

/// Layer tars from a `gen_layers.py` spec, in `dir`: `dir/NAME.tar` per `=== NAME`.
fn gen_layers(dir: &Path, spec: &str) {
    std::fs::create_dir_all(dir).unwrap();
    run_with_stdin(
        Command::new(python())
            .arg(support("gen_layers.py"))
            .arg(dir),
        spec.as_bytes(),
    );
}

/// Whether a layer file is an empty layer: no member (GNU tar and tarfile agree), zeros only.
fn assert_empty_layer(tar: &Path, what: &str) {
    let members = tar_members(tar);
    assert!(
        members.is_empty(),
        "{what}: the commit of an untouched container holds {:?}",
        members.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );
    let listed = stdout_of(Command::new("tar").arg("tf").arg(tar));
    assert_eq!(listed, "", "{what}: tar tf");
    let bytes = std::fs::read(tar).unwrap();
    assert!(
        bytes.len() >= 1024 && bytes.iter().all(|&b| b == 0),
        "{what}: only the end-of-archive ({} bytes)",
        bytes.len()
    );
}

/// Upper paths carrying a `trusted.overlay.<what>` xattr.
fn with_overlay_xattr(upper: &Path, what: &str) -> Vec<String> {
    let script = r#"
import os, sys
root, name = sys.argv[1], sys.argv[2]
for dp, dn, fn in os.walk(root):
    for n in dn + fn:
        p = os.path.join(dp, n)
        if name in os.listxattr(p, follow_symlinks=False):
            print(os.path.relpath(p, root))
"#;
    let out = stdout_of(
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(upper)
            .arg(format!("trusted.overlay.{what}")),
    );
    out.lines().map(String::from).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The loop: create, mount, change through the kernel, commit; what was committed is the view

#[test]
fn the_loop_commits_what_the_merged_view_shows() {
    if !need_root("the container loop through overlay mounts") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (tars, base) = base_image(root);
    let s = Store::new(root.join("s"));

    // A relative image reference: the store records where it is, so commit finds it from anywhere.
    let created = stdout_of(
        s.lk("create")
            .args(["--name", "web", "--json", "oci:base:t"])
            .current_dir(root),
    );
    let v: Value = serde_json::from_str(&created).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["Id", "Name"]),
        "create --json: {created}"
    );
    assert_eq!(v["Name"], "web");
    let id = v["Id"].as_str().unwrap().to_string();
    assert!(is_hex64(&id), "{id}");
    assert!(exists(
        &s.path
            .join(".layerkit/containers")
            .join(format!("{id}.json"))
    ));
    for d in ["diff", "work", "merged", "link", "lower"] {
        assert!(exists(&s.path.join(&id).join(d)), "<cid>/{d}");
    }
    for d in ["diff", "link", "lower", "work"] {
        assert!(
            exists(&s.path.join(format!("{id}-init")).join(d)),
            "<cid>-init/{d}"
        );
    }

    let (merged, _guard) = s.mount("web");
    assert_eq!(merged, s.path.join(&id).join("merged"));
    // Idempotent, by a unique id prefix: the same path, still one mount.
    assert_eq!(
        stdout_of(s.lk("mount").arg(&id[..12])),
        merged.display().to_string()
    );
    assert_eq!(
        overlay_mounts_at(&merged).len(),
        1,
        "mount twice = one mount"
    );
    sh(&merged, CHANGES);
    let want = without_placeholders(&dump_tree(&merged), &[]);

    // Commit while mounted, from another cwd: a layer file and an image.
    let c1 = root.join("c1.tar");
    let (media, digest, size, diff_id) = descriptor(
        &run(s
            .lk("commit")
            .arg("web")
            .arg("-o")
            .arg(&c1)
            .arg("--json")
            .current_dir("/"))
        .stdout,
    );
    assert_eq!(media, "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(digest, sha256_file(&c1));
    assert_eq!(
        diff_id, digest,
        "an uncompressed layer's diffID is its digest"
    );
    assert_eq!(size, std::fs::metadata(&c1).unwrap().len());
    let out = root.join("out");
    let img = stdout_of(
        s.lk("commit")
            .arg(&id)
            .arg("-o")
            .arg(format!("oci:{}:new", out.display()))
            .args(["--json", "--message", "through the kernel"])
            .current_dir("/"),
    );
    let img: Value = serde_json::from_str(&img).unwrap();
    assert_eq!(img["layer"]["diffID"], diff_id.as_str(), "{img}");

    // After umount (twice: idempotent): the same layer, byte for byte.
    s.umount("web");
    s.umount("web");
    assert!(overlay_mounts_at(&merged).is_empty(), "umount unmounts");
    let c2 = root.join("c2.tar");
    run(s.lk("commit").arg("web").arg("-o").arg(&c2));
    assert!(
        std::fs::read(&c1).unwrap() == std::fs::read(&c2).unwrap(),
        "commit while mounted and after umount differ"
    );

    // (a) The image's layer files + the committed layer, in a fresh store, mounted by the kernel.
    let mut stack: Vec<&OsStr> = tars.iter().map(|p| p.as_os_str()).collect();
    stack.push(c1.as_os_str());
    let (lowerdir, _) = apply_store(&root.join("s2"), &stack);
    {
        let m = mount_lowers(root, &lowerdir, "");
        assert_same(
            &want,
            &dump_tree(&m.path),
            "image layers + committed layer (kernel) vs the container's merged view",
        );
    }
    let flat = root.join("flat");
    run(layerapply().arg("--rootfs").arg(&flat).args(&stack));
    assert_same(
        &want,
        &dump_tree(&flat),
        "--rootfs of image layers + committed layer vs the container's merged view",
    );

    // (b) The committed image: the base's blobs and config plus one layer, as umoci unpacks it.
    let (man_digest, manifest, config) = layout_image(&out, "new");
    assert_eq!(img["manifest"]["digest"], man_digest.as_str());
    let (_, base_manifest, base_config) = layout_image(&base, "t");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(
        &layers[..3],
        base_manifest["layers"].as_array().unwrap().as_slice(),
        "the base's layer blobs are reused"
    );
    assert_eq!(layers[3]["digest"], img["layer"]["digest"]);
    let unzipped = run(Command::new("gzip")
        .arg("-dc")
        .arg(blob(&out, layers[3]["digest"].as_str().unwrap())));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&unzipped.stdout)),
        diff_id,
        "the new blob decompresses to the committed layer"
    );
    let mut diff_ids = base_config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .clone();
    diff_ids.push(Value::from(diff_id.clone()));
    assert_eq!(config["rootfs"]["diff_ids"], Value::from(diff_ids));
    let history = config["history"].as_array().unwrap();
    let real: Vec<&Value> = history
        .iter()
        .filter(|h| h["empty_layer"] != true)
        .collect();
    assert_eq!(real.len(), 4, "history pairs with the layers: {history:?}");
    assert!(real[3].to_string().contains("through the kernel"));
    assert_eq!(config["config"], base_config["config"], "the base's config");
    let view = umoci_view(root, &format!("{}:new", out.display()), "committed");
    assert_same(
        &want,
        &view,
        "umoci raw unpack of the committed image vs merged",
    );

    // With SOURCE_DATE_EPOCH: the same image, byte for byte, wherever it is written; a zstd
    // layer file holds the same layer.
    let mut manifests = BTreeSet::new();
    for o in ["r1", "r2"] {
        let r = stdout_of(
            s.lk("commit")
                .arg("web")
                .arg("-o")
                .arg(format!("oci:{}:x", root.join(o).display()))
                .arg("--json")
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        let r: Value = serde_json::from_str(&r).unwrap();
        manifests.insert(r["manifest"]["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(
        manifests.len(),
        1,
        "SOURCE_DATE_EPOCH: one manifest {manifests:?}"
    );
    let zst = root.join("c.tar.zst");
    let z = descriptor(&run(s.lk("commit").arg("web").arg("-o").arg(&zst).arg("--json")).stdout);
    assert_eq!(z.0, "application/vnd.oci.image.layer.v1.tar+zstd");
    let plain = run(Command::new("zstd").arg("-dc").arg(&zst));
    assert_eq!(format!("sha256:{}", sha256_hex(&plain.stdout)), diff_id);
    assert_eq!(z.3, diff_id);

    // (c) skopeo copies it (checking every digest it reads).
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:new", out.display()))
        .arg(format!("oci:{}:copied", root.join("copy").display())));
}

/// A `--userxattr` store: its layers carry user.overlay.* markers, so mount must pass `userxattr`
/// (else the image's whiteouts and opaque dirs show wrong), and commit must read them.
#[test]
fn a_userxattr_store_runs_the_same_loop() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let tars = layer_tars(root);
    let s = Store::new(root.join("s"));
    let id = stdout_of(
        s.lk("create")
            .args(["--userxattr", "--name", "u"])
            .args(&tars),
    );
    let (merged, _guard) = s.mount(&id);
    let opts = overlay_mounts_at(&merged);
    assert!(opts[0].split(',').any(|o| o == "userxattr"), "{}", opts[0]);
    assert_eq!(
        listing(&merged.join("var/lib/x")),
        vec!["c"],
        "the opaque dir"
    );
    sh(&merged, CHANGES);
    let want = without_placeholders(&dump_tree(&merged), &[]);
    let layer = root.join("u.tar");
    run(s.lk("commit").arg("u").arg("-o").arg(&layer));
    let flat = root.join("flat");
    run(layerapply()
        .arg("--rootfs")
        .arg(&flat)
        .args(&tars)
        .arg(&layer));
    assert_same(
        &want,
        &dump_tree(&flat),
        "userxattr: layers + commit vs merged",
    );
}

// ---------------------------------------------------------------------------------------------
// 2. inspect: docker's shape, and dirs that mount by hand to the same view

#[test]
fn inspect_dirs_mount_by_hand_to_the_same_view() {
    if !need_root("hand mounts of inspect's dirs") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let s = Store::new(root.join("s"));
    let image = format!("oci:{}:t", base.display());
    let id = s.create("db", [&image]);
    let (merged, guard) = s.mount("db");
    sh(&merged, CHANGES);
    let kernel = dump_tree(&merged);
    // What layerkit passed: its own `lower` file (l/ names relative to the store).
    let opts = overlay_mounts_at(&merged);
    assert_eq!(opts.len(), 1);
    let lower = std::fs::read_to_string(s.path.join(&id).join("lower")).unwrap();
    assert_eq!(
        opt(&opts[0], "lowerdir"),
        Some(lower.as_str()),
        "{}",
        opts[0]
    );
    assert_eq!(
        opt(&opts[0], "upperdir"),
        Some(format!("{id}/diff").as_str())
    );
    assert_eq!(s.inspect("db")["Mounted"], true);
    s.umount("db");
    drop(guard);

    let v = s.inspect(&id[..10]);
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "Id",
            "Name",
            "Image",
            "Created",
            "GraphDriver",
            "RootFS",
            "Mounted"
        ]),
        "{v}"
    );
    assert_eq!(v["Id"], id.as_str());
    assert_eq!(v["Name"], "/db");
    assert_eq!(v["Mounted"], false);
    let (_, manifest, config) = layout_image(&base, "t");
    assert_eq!(v["Image"], manifest["config"]["digest"]);
    assert_eq!(v["RootFS"]["Type"], "layers");
    assert_eq!(v["RootFS"]["Layers"], config["rootfs"]["diff_ids"]);
    let gd = &v["GraphDriver"];
    assert_eq!(gd["Name"], "overlay2");
    let data = &gd["Data"];
    let dir = |k: &str| data[k].as_str().unwrap().to_string();
    let upper_dir = s.path.join(&id).join("diff");
    assert_eq!(dir("UpperDir"), upper_dir.display().to_string());
    assert_eq!(
        dir("WorkDir"),
        s.path.join(&id).join("work").display().to_string()
    );
    assert_eq!(dir("MergedDir"), merged.display().to_string());
    // LowerDir: the init layer's diff, then the image's layers topmost first, as layerapply
    // prints them for the image.
    let (image_lowerdir, _) = apply_store(&s.path, &[OsStr::new(&image)]);
    let init = s.path.join(format!("{id}-init")).join("diff");
    assert_eq!(
        dir("LowerDir"),
        format!("{}:{image_lowerdir}", init.display())
    );
    // The `lower` file's l/ names are the same dirs, in the same order.
    let by_links: Vec<PathBuf> = lower
        .split(':')
        .map(|l| std::fs::canonicalize(s.path.join(l)).unwrap())
        .collect();
    let by_inspect: Vec<PathBuf> = dir("LowerDir")
        .split(':')
        .map(|l| std::fs::canonicalize(l).unwrap())
        .collect();
    assert_eq!(by_links, by_inspect, "<cid>/lower vs LowerDir");

    // The short links: l/<link> of each dir is that dir's diff; the init layer's `lower` is the
    // container's without the init layer.
    let link = |d: &str| std::fs::read_to_string(s.path.join(d).join("link")).unwrap();
    let init_link = link(&format!("{id}-init"));
    let resolve = |l: &str| std::fs::canonicalize(s.path.join("l").join(l)).unwrap();
    assert_eq!(
        resolve(&link(&id)),
        std::fs::canonicalize(&upper_dir).unwrap()
    );
    assert_eq!(resolve(&init_link), std::fs::canonicalize(&init).unwrap());
    let init_lower = std::fs::read_to_string(s.path.join(format!("{id}-init/lower"))).unwrap();
    assert_eq!(lower, format!("l/{init_link}:{init_lower}"));
    // A relative --store gives the same absolute dirs.
    let rel = stdout_of(
        layerkit()
            .args(["inspect", "--store", "s", &id])
            .current_dir(root),
    );
    assert_eq!(serde_json::from_str::<Value>(&rel).unwrap(), v);

    let hand = root.join("hand");
    let m = mount_by_hand(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            dir("LowerDir"),
            dir("UpperDir"),
            dir("WorkDir")
        ),
        &hand,
        Path::new("/"),
    );
    assert_same(
        &kernel,
        &dump_tree(&hand),
        "hand mount of inspect's dirs vs layerkit mount",
    );
    drop(m);
}

// ---------------------------------------------------------------------------------------------
// 3. 128 layers: short names keep the mount within a page

#[test]
fn a_128_layer_container_mounts_with_short_names() {
    if !need_root("a 128-layer overlay mount") {
        return;
    }
    let t = scratch();
    let root = t.path();
    // Layer i: f/i, top = i, g/i with g/(i-1) deleted: the last layer's top wins, and only g/127
    // survives when the stack is in order.
    let mut spec = String::new();
    for i in 0..128 {
        spec.push_str(&format!(
            "=== L{i}\nd f\nf f/{i} data={i}\nf top data={i}\nd g\nf g/{i} data={i}\n"
        ));
        if i > 0 {
            spec.push_str(&format!("w g/.wh.{}\n", i - 1));
        }
    }
    let dir = root.join("tars");
    gen_layers(&dir, &spec);
    let tars: Vec<PathBuf> = (0..128).map(|i| dir.join(format!("L{i}.tar"))).collect();
    let s = Store::new(root.join("s"));
    let id = s.create("tall", &tars);
    let (merged, _guard) = s.mount("tall");
    let opts = overlay_mounts_at(&merged);
    assert_eq!(opts.len(), 1, "one mount");
    let lowerdir = opt(&opts[0], "lowerdir").unwrap();
    let items: Vec<&str> = lowerdir.split(':').collect();
    assert_eq!(items.len(), 129, "init + 128 layers");
    assert!(
        items.iter().all(|l| l.starts_with("l/") && l.len() == 28),
        "lowers as l/ names: {lowerdir}"
    );
    assert!(opts[0].len() < 4096, "{} bytes of options", opts[0].len());
    let view = dump_tree(&merged);
    for i in 0..128 {
        assert!(
            line_of(&view, &format!("f/{i}")).is_some_and(|l| l.contains(" f 0644 0 0 ")),
            "f/{i} missing from the merged view"
        );
    }
    assert_eq!(std::fs::read_to_string(merged.join("top")).unwrap(), "127");
    assert_eq!(listing(&merged.join("g")), vec!["127".to_string()]);
    let want = without_placeholders(&view, &["etc"]);

    // layerapply --short for the same stack: under a page, and it mounts from the store.
    let short = stdout_of(
        layerapply()
            .arg("--store")
            .arg(&s.path)
            .arg("--short")
            .args(&tars),
    );
    assert!(short.len() < 4096, "--short: {} bytes", short.len());
    let items: Vec<&str> = short.split(':').collect();
    assert_eq!(items.len(), 128);
    assert!(items.iter().all(|l| l.starts_with("l/")), "{short}");
    assert_eq!(
        format!("{}:{short}", lowerdir.split(':').next().unwrap()),
        lowerdir,
        "the container's lowers are its init layer's then the stack's --short"
    );
    let absolute = stdout_of(layerapply().arg("--store").arg(&s.path).args(&tars));
    assert!(absolute.len() > 4096, "absolute paths would not fit a page");
    let ro = root.join("ro");
    let m = mount_by_hand(&format!("lowerdir={short}"), &ro, &s.path);
    assert_same(
        &want,
        &dump_tree(&ro),
        "--short lowerdir mounted from the store vs merged",
    );
    drop(m);
    s.umount(&id);
}

// ---------------------------------------------------------------------------------------------
// 4. Placeholders: only where the image has nothing; the image's dirs keep their attributes

const PLACEHOLDER_IMAGES: &str = r#"
=== a
d etc mode=0750 uid=1 gid=1 mtime=1234567890 x.user.e=v
f etc/hosts data=127.0.0.1\slocalhost\n mtime=1300000000
d dev mode=0711 uid=2 gid=3 mtime=1200000000
f proc data=not-a-dir
l sys link=/nowhere
=== b
d private
d private/etc
f private/etc/passwd data=root
l etc link=private/etc
l dev link=/realdev
=== c1
d etc
f etc/hosts data=h
f etc/keep data=k
f dev data=d
d opt
=== c2
d etc mode=0750 uid=1 gid=1 mtime=1111111111
w etc/.wh..wh..opq
f etc/b data=b
w .wh.dev
"#;

#[test]
fn placeholders_only_where_the_image_has_nothing() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let dir = root.join("tars");
    gen_layers(&dir, PLACEHOLDER_IMAGES);
    let s = Store::new(root.join("s"));
    let tar = |n: &str| dir.join(format!("{n}.tar"));

    // A fresh container of an image without any of them: all of them.
    let d = s.create("d", [format!("oci:{}:t", base.display())]);
    // An image with /etc/hosts, /etc 0750 1:1 with an xattr, /dev 0711 2:3, /proc a file and
    // /sys a symlink.
    let a = s.create("a", [tar("a")]);
    // /etc and /dev symlinks.
    let b = s.create("b", [tar("b")]);
    // /etc/hosts and /dev deleted by the top layer (opaque /etc, whiteout of /dev).
    let c = s.create("c", [tar("c1"), tar("c2")]);

    let (md, _gd) = s.mount(&d);
    let (ma, _ga) = s.mount("a");
    let (mb, _gb) = s.mount("b");
    let (mc, _gc) = s.mount("c");
    let (vd, va, vb, vc) = (
        dump_tree(&md),
        dump_tree(&ma),
        dump_tree(&mb),
        dump_tree(&mc),
    );

    assert_placeholders(&vd, "image without placeholders");

    // a: the image's own /etc/hosts, /etc, /dev, /proc, /sys; the rest made.
    assert_eq!(
        line_of(&va, "etc"),
        Some("etc d 0750 1 1 mtime=1234567890 user.e=76"),
        "the image's /etc in the merged view:\n{va}"
    );
    assert_eq!(
        std::fs::read_to_string(ma.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n",
        "the image's /etc/hosts is kept"
    );
    assert_eq!(
        line_of(&va, "dev"),
        Some("dev d 0711 2 3 mtime=1200000000"),
        "the image's /dev:\n{va}"
    );
    assert!(line_of(&va, "proc")
        .unwrap()
        .starts_with("proc f 0644 0 0 9 "));
    assert_eq!(line_of(&va, "sys"), Some("sys l 0777 0 0 -> /nowhere"));
    for p in [
        "dev/pts",
        "dev/shm",
        "dev/console",
        "etc/hostname",
        "etc/resolv.conf",
        "etc/mtab",
        ".dockerenv",
    ] {
        assert!(line_of(&va, p).is_some(), "a: {p} made:\n{va}");
    }
    let init_a = s.path.join(format!("{a}-init/diff"));
    for p in ["etc/hosts", "proc", "sys"] {
        assert!(!exists(&init_a.join(p)), "a: the init layer has {p}");
    }

    // b: /etc and /dev stay symlinks, nothing is made below their targets.
    assert_eq!(line_of(&vb, "etc"), Some("etc l 0777 0 0 -> private/etc"));
    assert_eq!(line_of(&vb, "dev"), Some("dev l 0777 0 0 -> /realdev"));
    let under: Vec<&str> = vb
        .lines()
        .filter(|l| l.starts_with("private/etc/") || l.starts_with("etc/") || l.starts_with("dev/"))
        .collect();
    assert_eq!(
        under,
        vec![line_of(&vb, "private/etc/passwd").unwrap()],
        "b:\n{vb}"
    );
    for p in ["proc", "sys", ".dockerenv"] {
        assert!(line_of(&vb, p).is_some(), "b: {p} made:\n{vb}");
    }
    let init_b = s.path.join(format!("{b}-init/diff"));
    assert_eq!(
        listing(&init_b),
        vec![".dockerenv", "proc", "sys"],
        "b's init layer"
    );

    // c: what the top layer deleted is nothing: placeholders there; /etc as the top layer has it.
    assert_eq!(
        line_of(&vc, "etc"),
        Some("etc d 0750 1 1 mtime=1111111111"),
        "c:\n{vc}"
    );
    assert!(
        line_of(&vc, "etc/keep").is_none(),
        "c: opaque /etc hides keep"
    );
    assert!(line_of(&vc, "etc/b").is_some());
    assert_placeholders(&vc, "c (deleted and hidden paths)");

    // None of the placeholders is in the commit of an untouched (even browsed) container.
    for (c, what) in [(&d, "d"), (&a, "a"), (&b, "b"), (&c, "c")] {
        let out = root.join(format!("empty-{what}.tar"));
        run(s.lk("commit").arg(c).arg("-o").arg(&out));
        assert_empty_layer(&out, what);
    }
    let out = root.join("empty-d-after.tar");
    s.umount(&d);
    run(s.lk("commit").arg(&d).arg("-o").arg(&out));
    assert_empty_layer(&out, "d after umount");

    // What is copied up from the image's /etc keeps its mode and owner.
    sh(&ma, "echo x > etc/new");
    let up = std::fs::symlink_metadata(s.path.join(&a).join("diff/etc")).unwrap();
    assert_eq!(
        (up.mode() & 0o7777, up.uid(), up.gid()),
        (0o750, 1, 1),
        "copied-up /etc"
    );
}

/// The image's root dir is a dir above every placeholder: its mode, owner and xattrs show in the
/// merged view as in the image's own view (as the init layer has them; containers/storage gives
/// the container's upper root its parent's owner and mode for the same reason).
#[test]
fn the_merged_root_keeps_the_image_root() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(
        &dir,
        "=== r\nd ./ mode=0750 uid=5 gid=6 mtime=1234 x.user.r=1\nf ./a data=a\n",
    );
    let tar = dir.join("r.tar");
    let flat = root.join("flat");
    run(layerapply().arg("--rootfs").arg(&flat).arg(&tar));
    let s = Store::new(root.join("s"));
    let id = s.create("r", [&tar]);
    let (merged, _guard) = s.mount("r");
    let attrs = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        let x = stdout_of(
            Command::new("getfattr")
                .args(["--absolute-names", "-d"])
                .arg(p),
        );
        (
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            x.lines().skip(1).collect::<Vec<_>>().join(" "),
        )
    };
    let want = attrs(&flat);
    assert_eq!((want.0, want.1, want.2), (0o750, 5, 6), "the image's root");
    assert_eq!(
        attrs(&s.path.join(format!("{id}-init/diff"))),
        want,
        "the init layer's root"
    );
    assert_eq!(attrs(&merged), want, "the container's merged root");
}

/// A child process killed (and reaped) when dropped.
struct Busy(std::process::Child);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container some process still uses is never mounted twice: a second live overlay on the same
/// upper and work dirs is undefined behaviour (the kernel says so). `umount` of a busy container
/// must either fail (it stays mounted) or the next `mount` must refuse while the detached mount
/// lives.
#[test]
fn a_busy_container_is_never_mounted_twice() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(&dir, "=== a\nf a data=a\n");
    let s = Store::new(root.join("s"));
    s.create("b", [dir.join("a.tar")]);
    let (merged, _guard) = s.mount("b");
    let _busy = Busy(
        Command::new("sleep")
            .arg("60")
            .current_dir(&merged)
            .spawn()
            .unwrap(),
    );
    let umount = s.lk("umount").arg("b").output().unwrap();
    if umount.status.success() {
        let again = s.lk("mount").arg("b").output().unwrap();
        assert!(
            !again.status.success(),
            "umount of a busy container succeeded (detached), and mount made a second overlay on \
             the same upper while the first still lives: {}",
            String::from_utf8_lossy(&again.stdout)
        );
    } else {
        assert_eq!(
            overlay_mounts_at(&merged).len(),
            1,
            "a failed umount leaves it mounted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. rm, rmi, prune

#[test]
fn rm_rmi_prune_lifecycle() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let image = format!("oci:{}:t", base.display());
    let s = Store::new(root.join("s"));
    let id = s.create("c1", [&image]);
    let idle = s.create("idle", [&image]);
    let (merged, _guard) = s.mount("c1");
    sh(&merged, "echo x > x");

    // ls: the shapes, who uses what.
    let l = s.ls();
    assert_eq!(l["layers"].as_array().unwrap().len(), 3, "{l}");
    for layer in l["layers"].as_array().unwrap() {
        let keys: BTreeSet<&str> = layer
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["id", "diffID", "size", "usedBy"]),
            "{layer}"
        );
        let users: BTreeSet<&str> = layer["usedBy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert_eq!(
            users,
            BTreeSet::from([image.as_str(), "c1", "idle"]),
            "{layer}"
        );
    }
    let images = l["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["ref"], image.as_str());
    let containers = l["containers"].as_array().unwrap();
    let c1 = containers.iter().find(|c| c["name"] == "c1").unwrap();
    assert_eq!(c1["id"], id.as_str());
    assert_eq!(c1["mounted"], true);
    assert_eq!(c1["size"], 2, "{c1}");
    assert_eq!(
        containers.iter().find(|c| c["name"] == "idle").unwrap()["mounted"],
        false
    );

    // rm refuses a mounted container (others in the same call still go); it stays.
    refused(s.lk("rm").arg("c1"), 1);
    let out = s.lk("rm").arg("c1").arg("idle").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "rm c1 idle: c1 is mounted");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        idle,
        "idle is removed"
    );
    assert_eq!(overlay_mounts_at(&merged).len(), 1, "still mounted");
    let l = s.ls();
    assert_eq!(l["containers"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["containers"][0]["mounted"], true);
    assert!(!exists(&s.path.join(&idle)) && !exists(&s.path.join(format!("{idle}-init"))));

    // rmi refuses an image in use.
    refused(s.lk("rmi").arg(&image), 1);
    assert_eq!(s.ls()["images"].as_array().unwrap().len(), 1);

    // rm -f unmounts and removes: dirs, links, record.
    let links_before = s.links();
    assert_eq!(
        links_before.len(),
        5,
        "3 layers + init + container: {links_before:?}"
    );
    assert_eq!(stdout_of(s.lk("rm").arg("-f").arg(&id[..8])), id);
    assert!(overlay_mounts_at(&merged).is_empty(), "rm -f unmounts");
    assert!(!exists(&s.path.join(&id)) && !exists(&s.path.join(format!("{id}-init"))));
    assert!(!exists(
        &s.path
            .join(".layerkit/containers")
            .join(format!("{id}.json"))
    ));
    assert_eq!(s.links().len(), 3, "the container's links go with it");
    assert!(s.ls()["containers"].as_array().unwrap().is_empty());

    // rmi forgets the record, not the layers; prune takes them.
    let layers = s.layer_ids();
    assert_eq!(
        stdout_of(s.lk("rmi").arg(&image)).split_whitespace().next(),
        Some("forgot")
    );
    assert_eq!(s.layer_ids(), layers, "layers stay until prune");
    assert_eq!(s.prune(), layers, "prune deletes the image's layers");
    let l = s.ls();
    assert_eq!(
        l,
        serde_json::json!({"layers": [], "images": [], "containers": []}),
        "an empty store"
    );
    assert_eq!(s.links(), Vec::<String>::new(), "l/ is empty");
    assert_eq!(listing(&s.path), vec![".layerkit", "l"]);
    assert_eq!(
        listing(&s.path.join(".layerkit/staging")),
        Vec::<String>::new()
    );
    assert_eq!(s.prune(), BTreeSet::new(), "nothing more to prune");
    // What dead runs leave: a staging dir nobody holds, an l/ link to nothing.
    let dangling = "AAAAAAAAAAAAAAAAAAAAAAAAAA";
    std::os::unix::fs::symlink(
        format!("../{}/diff", "0".repeat(64)),
        s.path.join("l").join(dangling),
    )
    .unwrap();
    std::fs::create_dir(s.path.join(".layerkit/staging/999999-DEADRUN")).unwrap();
    let out = stdout_of(&mut s.lk("prune"));
    assert!(out.contains(&format!("removed link l/{dangling}")), "{out}");
    assert!(out.contains("removed staging 999999-DEADRUN"), "{out}");
    assert_eq!(s.links(), Vec::<String>::new(), "l/ is empty");
    assert_eq!(
        listing(&s.path.join(".layerkit/staging")),
        Vec::<String>::new()
    );

    // The store still works. rmi by a digest prefix (refused while used, -f forgets it).
    let again = s.create("again", [&image]);
    let (m2, _g2) = s.mount("again");
    assert_eq!(
        std::fs::read_to_string(m2.join("etc/os")).unwrap(),
        "changed\n"
    );
    let config = s.inspect("again")["Image"].as_str().unwrap().to_string();
    let prefix = &config["sha256:".len()..][..12];
    refused(s.lk("rmi").arg(prefix), 1);
    run(s.lk("rmi").arg("-f").arg(prefix));
    assert!(s.ls()["images"].as_array().unwrap().is_empty());
    assert_eq!(
        s.prune(),
        BTreeSet::new(),
        "the container still uses the layers"
    );
    assert_eq!(s.layer_ids(), layers);
    run(s.lk("rm").arg("-f").arg(&again));
    assert_eq!(s.prune(), layers);
}

#[test]
fn prune_keeps_what_anything_uses() {
    if !need_root("overlay mounts of store layers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let image = format!("oci:{}:t", base.display());
    let dir = root.join("tars");
    let mut spec = String::new();
    for set in ["x", "j", "m", "k", "d"] {
        for i in 0..2 {
            spec.push_str(&format!("=== {set}{i}\nf {set}{i} data={set}{i}\n"));
        }
    }
    gen_layers(&dir, &spec);
    let tars =
        |set: &str| -> Vec<PathBuf> { (0..2).map(|i| dir.join(format!("{set}{i}.tar"))).collect() };
    let s = Store::new(root.join("s"));

    // A recorded image; a container of layer files; a container whose image was forgotten (-f).
    let (_, image_ids) = apply_store(&s.path, &[OsStr::new(&image)]);
    s.create("x", tars("x"));
    let j_layout = make_image(&root.join("j"), &tars("j"), &["gzip", "none"], "");
    let j = s.create("j", [format!("oci:{}:t", j_layout.display())]);
    run(s
        .lk("rmi")
        .arg("-f")
        .arg(format!("oci:{}:t", j_layout.display())));
    let used_by = |name: &str| -> BTreeSet<String> {
        s.ls()["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["usedBy"].as_array().unwrap().iter().any(|u| u == name))
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    };
    let x_ids = used_by("x");
    let j_ids = used_by("j");
    assert_eq!((x_ids.len(), j_ids.len()), (2, 2));
    // Layers no record names: mounted by hand (absolute lowerdir; --short from the store), and not.
    let m_tars = tars("m");
    let m_args: Vec<&OsStr> = m_tars.iter().map(|p| p.as_os_str()).collect();
    let (m_lowerdir, m_ids) = apply_store(&s.path, &m_args);
    let k_tars = tars("k");
    let k_args: Vec<&OsStr> = k_tars.iter().map(|p| p.as_os_str()).collect();
    let (_, k_ids) = apply_store(&s.path, &k_args);
    let k_short = stdout_of(
        layerapply()
            .arg("--store")
            .arg(&s.path)
            .arg("--short")
            .args(&k_tars),
    );
    let d_tars = tars("d");
    let d_args: Vec<&OsStr> = d_tars.iter().map(|p| p.as_os_str()).collect();
    let (_, d_ids) = apply_store(&s.path, &d_args);

    let mm = mount_lowers(root, &m_lowerdir, "");
    let m_view = dump_tree(&mm.path);
    let km = mount_by_hand(&format!("lowerdir={k_short}"), &root.join("k-ro"), &s.path);
    let k_view = dump_tree(&root.join("k-ro"));

    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
    assert_eq!(s.prune(), set(&d_ids), "prune takes only the unused layers");
    for id in image_ids
        .iter()
        .chain(&m_ids)
        .chain(&k_ids)
        .chain(&x_ids)
        .chain(&j_ids)
    {
        assert!(exists(&s.path.join(id).join("diff")), "{id} was pruned");
    }
    assert_same(&m_view, &dump_tree(&mm.path), "a hand mount after prune");
    assert_same(
        &k_view,
        &dump_tree(&root.join("k-ro")),
        "a --short hand mount after prune",
    );

    drop(mm);
    drop(km);
    assert_eq!(
        s.prune(),
        set(&m_ids).union(&set(&k_ids)).cloned().collect()
    );
    run(s.lk("rm").arg("x").arg(&j));
    assert_eq!(s.prune(), x_ids.union(&j_ids).cloned().collect());
    assert_eq!(
        s.layer_ids(),
        set(&image_ids),
        "the recorded image's layers stay"
    );
}

/// The printed absolute lowerdir, mounted as printed, keeps its layers whatever the store's path
/// looks like: with a space (mountinfo writes `\040`) or reached through a symlink.
#[test]
fn prune_keeps_layers_mounted_through_any_path() {
    if !need_root("overlay mounts of store layers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(&dir, "=== a\nf a data=a\n=== b\nf b data=b\n");
    let tars = [dir.join("a.tar"), dir.join("b.tar")];
    let args: Vec<&OsStr> = tars.iter().map(|p| p.as_os_str()).collect();
    std::fs::create_dir(root.join("real")).unwrap();
    std::os::unix::fs::symlink("real", root.join("link")).unwrap();
    std::fs::create_dir(root.join("sp ace")).unwrap();
    let mut failures = Vec::new();
    for (apply_as, prune_as) in [
        (root.join("sp ace/s"), root.join("sp ace/s")),
        (root.join("link/s"), root.join("real/s")),
    ] {
        let (lowerdir, ids) = apply_store(&apply_as, &args);
        let m = mount_lowers(root, &lowerdir, "");
        let before = dump_tree(&m.path);
        let pruned = Store::new(prune_as.clone()).prune();
        if !pruned.is_empty() {
            failures.push(format!(
                "prune --store {:?} deleted {pruned:?}, which a mount of lowerdir={lowerdir} uses",
                prune_as.display()
            ));
            continue;
        }
        for id in &ids {
            assert!(exists(&prune_as.join(id).join("diff")));
        }
        assert_same(&before, &dump_tree(&m.path), "the hand mount after prune");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 6. layerdiff -l: a lowerdir string, a `lower` file, repeated -l: the same bytes as -l DIR...

const REDIRECT_LAYERS: &str = r#"
=== r0
d dir
f dir/a data=a
d dir/sub
f dir/sub/s data=s
f big size=200000
f big2 size=100000
f big3 size=50000
f gone data=gone
=== r1
d dir
f dir/b data=b
f extra data=e
"#;

const REDIRECT_CHANGES: &str = "
mv dir dir2
mv dir2/sub sub2
mkdir dir2/newsub && echo z > dir2/newsub/z
chmod 0600 big
chown 5:6 big2
mv big3 big3.moved
echo n > new
rm gone
";

#[test]
fn layerdiff_lower_forms_give_the_same_layer() {
    if !need_root("a redirect_dir=on,metacopy=on overlay mount") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(&dir, REDIRECT_LAYERS);
    let tars = [dir.join("r0.tar"), dir.join("r1.tar")];
    let s = Store::new(root.join("s"));
    let id = s.create("r", &tars);
    let v = s.inspect("r");
    let data = &v["GraphDriver"]["Data"];
    let dir_of = |k: &str| data[k].as_str().unwrap().to_string();
    let (lowerdir, upper, work) = (dir_of("LowerDir"), dir_of("UpperDir"), dir_of("WorkDir"));
    let hand = root.join("hand");
    let want = {
        let _m = mount_by_hand(
            &format!(
                "lowerdir={lowerdir},upperdir={upper},workdir={work},redirect_dir=on,metacopy=on,index=off"
            ),
            &hand,
            Path::new("/"),
        );
        sh(&hand, REDIRECT_CHANGES);
        without_placeholders(&dump_tree(&hand), &["etc"])
    };
    let upper = PathBuf::from(upper);
    assert!(
        !with_overlay_xattr(&upper, "redirect").is_empty()
            && !with_overlay_xattr(&upper, "metacopy").is_empty(),
        "the upper should hold redirects and metacopy files"
    );

    let diff = |name: &str, lowers: &[&str], cwd: &Path| -> Vec<u8> {
        let out = root.join(format!("{name}.tar"));
        let mut c = layerdiff();
        c.arg(&upper).arg("-o").arg(&out).current_dir(cwd);
        for l in lowers {
            c.arg("-l").arg(l);
        }
        run(&mut c);
        std::fs::read(&out).unwrap()
    };
    let dirs: Vec<&str> = lowerdir.split(':').collect();
    assert_eq!(dirs.len(), 3);
    let by_dirs = diff("dirs", &dirs, Path::new("/"));

    // Applied on the image's layers by the independent applier: the kernel's view.
    let flat = root.join("flat");
    run(layerapply().arg("--rootfs").arg(&flat).args(&tars));
    apply_oci(&flat, &root.join("dirs.tar"));
    assert_same(
        &want,
        &dump_tree(&flat),
        "layers + diff vs the kernel's merged view",
    );
    // The lowers matter: without them the diff cannot be made.
    let out = layerdiff()
        .arg(&upper)
        .arg("-o")
        .arg(root.join("none.tar"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a diff of redirects without lowers must fail"
    );

    let lower_file = s.path.join(&id).join("lower");
    let short = std::fs::read_to_string(&lower_file).unwrap();
    let colon_alias = root.join("in:it");
    std::os::unix::fs::symlink(dirs[0], &colon_alias).unwrap();
    let escaped = format!(
        "{}:{}:{}",
        colon_alias.display().to_string().replace(':', "\\:"),
        dirs[1],
        dirs[2]
    );
    let rel_lower = format!("{id}/lower");
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("string", vec![lowerdir.as_str()], Path::new("/")),
        (
            "lower-file",
            vec![lower_file.to_str().unwrap()],
            Path::new("/"),
        ),
        ("lower-file-rel", vec![rel_lower.as_str()], &s.path),
        ("short-rel", vec![short.as_str()], &s.path),
        (
            "split",
            vec![&lowerdir[..lowerdir.rfind(':').unwrap()], dirs[2]],
            Path::new("/"),
        ),
        ("escaped", vec![escaped.as_str()], Path::new("/")),
    ];
    for (name, lowers, cwd) in cases {
        assert!(
            diff(name, &lowers, cwd) == by_dirs,
            "-l {lowers:?} (in {}) differs from -l DIR...",
            cwd.display()
        );
    }
    // commit diffs against the same lowers.
    let committed = root.join("commit.tar");
    run(s.lk("commit").arg("r").arg("-o").arg(&committed));
    assert!(
        std::fs::read(&committed).unwrap() == by_dirs,
        "layerkit commit differs from layerdiff -l DIR..."
    );
}

/// `-l DIR` is a dir even when its name has a colon (a lowerdir string only when it is not one).
#[test]
fn layerdiff_lower_dir_with_a_colon_is_a_dir() {
    let t = scratch();
    let root = t.path();
    sh(
        root,
        "mkdir -p up 'lo:wer' && echo a > 'lo:wer/a' && echo b > up/a && ln -s 'lo:wer' plain",
    );
    let diff = |l: &Path, out: &str| -> Vec<u8> {
        run(layerdiff()
            .arg(root.join("up"))
            .arg("-l")
            .arg(l)
            .arg("-o")
            .arg(root.join(out)));
        std::fs::read(root.join(out)).unwrap()
    };
    let want = diff(&root.join("plain"), "plain.tar");
    assert!(diff(&root.join("lo:wer"), "colon.tar") == want);
}

// ---------------------------------------------------------------------------------------------
// 7. Images by other transports; commit reads the image again from where it came from

#[test]
fn commit_to_archives_is_what_skopeo_and_umoci_read() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let archive = root.join("base.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&base)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let s = Store::new(root.join("s"));
    let id = s.create("arch", [format!("oci-archive:{}", archive.display())]);
    let (merged, _guard) = s.mount(&id);
    sh(&merged, CHANGES);
    let want = without_placeholders(&dump_tree(&merged), &[]);
    let docker = root.join("d.tar");
    let oa = root.join("oa.tar");
    run(s
        .lk("commit")
        .arg("arch")
        .arg("-o")
        .arg(format!("docker-archive:{}:lk/x:v1", docker.display())));
    run(s
        .lk("commit")
        .arg("arch")
        .arg("-o")
        .arg(format!("oci-archive:{}:y", oa.display())));
    let copy = root.join("copy");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("docker-archive:{}", docker.display()))
        .arg(format!("oci:{}:d", copy.display())));
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}:y", oa.display()))
        .arg(format!("oci:{}:o", copy.display())));
    for r in ["d", "o"] {
        let view = umoci_view(root, &format!("{}:{r}", copy.display()), r);
        assert_same(
            &want,
            &view,
            &format!("{r}: umoci of the committed archive vs merged"),
        );
    }

    // A container of layer files commits to a file only: refused, nothing written.
    let files = s.create("files", layer_tars(&root.join("more")));
    let out = root.join("refused");
    let err = String::from_utf8_lossy(
        &s.lk("commit")
            .arg(&files)
            .arg("-o")
            .arg(format!("oci:{}:x", out.display()))
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("layer file"), "{err}");
    assert!(!exists(&out), "nothing written");
}

/// commit -o IMAGE reads the base's blobs again and verifies them: a blob changed since create
/// fails the commit cleanly (one line naming it, nothing written); a layer file needs no blob.
#[test]
fn commit_verifies_the_image_it_reads_again() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let s = Store::new(root.join("s"));
    s.create("v", [format!("oci:{}:t", base.display())]);
    let (_, manifest, _) = layout_image(&base, "t");
    let digest = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = blob(&base, &digest);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[512 + 3] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    let outdir = root.join("outs");
    std::fs::create_dir(&outdir).unwrap();
    for target in [
        format!("oci:{}:x", outdir.join("layout").display()),
        format!("oci-archive:{}:x", outdir.join("layout").display()),
        format!("docker-archive:{}:a/b:c", outdir.join("layout").display()),
    ] {
        assert_fails_cleanly(
            s.lk("commit").arg("v").arg("-o").arg(&target),
            &[&digest],
            &outdir.join("layout"),
        );
    }
    let file = outdir.join("layer.tar");
    run(s.lk("commit").arg("v").arg("-o").arg(&file));
    assert_empty_layer(&file, "untouched");
}

/// The container's image stays where it was; commit reads it by what the store recorded, even
/// when that layout holds more images now (the README's loop commits into the image's own layout).
#[test]
fn commit_finds_the_image_after_its_layout_gains_images() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let (_, base) = base_image(root);
    let s = Store::new(root.join("s"));
    // No REF: the layout holds one image when the container is made.
    s.create("n", [format!("oci:{}", base.display())]);
    let (merged, _guard) = s.mount("n");
    sh(&merged, "echo 1 > one");
    run(s
        .lk("commit")
        .arg("n")
        .arg("-o")
        .arg(format!("oci:{}:v1", base.display())));
    sh(&merged, "echo 2 > two");
    run(s
        .lk("commit")
        .arg("n")
        .arg("-o")
        .arg(format!("oci:{}:v2", base.display())));
    let (_, m1, _) = layout_image(&base, "v1");
    let (_, m2, _) = layout_image(&base, "v2");
    assert_eq!(
        m1["layers"].as_array().unwrap()[..3],
        m2["layers"].as_array().unwrap()[..3]
    );
}

/// `inspect`'s LowerDir mounts by hand (and feeds `layerdiff -l`) when the store's path has a
/// colon, as layerapply's printed lowerdir does (`\:`).
#[test]
fn inspect_lowerdir_mounts_when_the_store_path_has_a_colon() {
    if !need_root("hand mounts of inspect's dirs") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(&dir, "=== a\nf a data=a\n");
    let s = Store::new(root.join("st:ore"));
    s.create("c", [dir.join("a.tar")]);
    let (merged, guard) = s.mount("c");
    let kernel = dump_tree(&merged);
    s.umount("c");
    drop(guard);
    let v = s.inspect("c");
    let data = &v["GraphDriver"]["Data"];
    let d = |k: &str| data[k].as_str().unwrap().to_string();
    let lowerdir = d("LowerDir");
    let hand = root.join("hand");
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            d("UpperDir"),
            d("WorkDir")
        ))
        .arg({
            std::fs::create_dir(&hand).unwrap();
            &hand
        })
        .output()
        .unwrap();
    let _m = out.status.success().then(|| Mount::guard(&hand));
    assert!(
        out.status.success(),
        "mount -o lowerdir={lowerdir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&kernel, &dump_tree(&hand), "hand mount vs layerkit mount");
}

/// A store's records and dirs are data, never trusted as paths: a record whose id names a place
/// outside the store is ignored (nothing there is deleted, mounted or unmounted); a `lower` file
/// cannot add mount options or lowers; a symlinked `merged` is refused; a record that cannot be
/// parsed still keeps its container's dirs; a container whose `merged` was removed (as Docker's
/// overlay2 does on unmount) is still a container; a bind mount of a container keeps `rm -f` off.
#[test]
fn a_tampered_store_is_never_trusted_as_paths() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(&dir, "=== a\nf a data=a\n");
    let tar = dir.join("a.tar");
    let s = Store::new(root.join("s"));
    let id = s.create("c", [&tar]);

    // 1. A hostile record: its id points out of the store. ls must neither delete the victim
    //    nor list it.
    let victim = root.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("data.json"), "keep").unwrap();
    let evil = format!(
        r#"{{"id":"../../../../../../../..{}/data","name":"evil","image":null,"from":[],"layers":[],"diffIDs":[],"created":"x"}}"#,
        victim.display()
    );
    std::fs::write(s.path.join(".layerkit/containers/evil.json"), evil).unwrap();
    let ls: Value = serde_json::from_str(&stdout_of(s.lk("ls").arg("--json"))).unwrap();
    assert_eq!(std::fs::read(victim.join("data.json")).unwrap(), b"keep");
    let names: Vec<&str> = ls["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c"], "the hostile record is not a container");
    refused(s.lk("rm").arg("evil"), 1);

    // 2. A `lower` file with extra options and a host dir: the mount takes its lowers from the
    //    record, not from that text.
    let lower = s.path.join(&id).join("lower");
    let orig = std::fs::read_to_string(&lower).unwrap();
    std::fs::write(&lower, format!("{orig}:{},metacopy=on", victim.display())).unwrap();
    let (merged, guard) = s.mount("c");
    let opts = overlay_mounts_at(&merged).join(" ");
    assert!(!opts.contains("metacopy=on"), "{opts}");
    assert!(!opts.contains(victim.to_str().unwrap()), "{opts}");
    assert!(!merged.join("data.json").exists());
    drop(guard);
    std::fs::write(&lower, orig).unwrap();

    // 3. A symlinked `merged` is refused, and nothing is mounted where it points.
    let target = root.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    let m = s.path.join(&id).join("merged");
    std::fs::remove_dir(&m).unwrap();
    std::os::unix::fs::symlink(&target, &m).unwrap();
    refused(s.lk("mount").arg("c"), 1);
    assert!(
        overlay_mounts_at(&target).is_empty(),
        "mounted through the symlink"
    );
    std::fs::remove_file(&m).unwrap();

    // 4. `merged` gone (Docker removes it on unmount): still a container; mount makes it again,
    //    and prune keeps its upper and image layer.
    std::fs::write(s.path.join(&id).join("diff/mine"), "mine").unwrap();
    run(&mut s.lk("prune"));
    assert!(
        s.path.join(&id).join("diff/mine").exists(),
        "prune took the upper"
    );
    let (merged, guard) = s.mount("c");
    assert_eq!(std::fs::read(merged.join("mine")).unwrap(), b"mine");
    assert_eq!(std::fs::read(merged.join("a")).unwrap(), b"a");

    // 5. A bind mount of the container: rm -f unmounts `merged` but refuses to take the dirs.
    let bind = root.join("bind");
    std::fs::create_dir_all(&bind).unwrap();
    run(Command::new("mount").arg("--bind").arg(&merged).arg(&bind));
    let _bind_guard = Mount::guard(&bind);
    drop(guard);
    refused(s.lk("rm").args(["-f", "c"]), 1);
    assert_eq!(std::fs::read(bind.join("mine")).unwrap(), b"mine");
    assert!(s.path.join(&id).join("diff/mine").exists());
    drop(_bind_guard);

    // 6. A record that cannot be parsed still keeps its container's dirs.
    let rec = s.path.join(format!(".layerkit/containers/{id}.json"));
    let good = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, "{\"truncated\":").unwrap();
    run(&mut s.lk("ls"));
    run(&mut s.lk("prune"));
    assert!(
        s.path.join(&id).join("diff/mine").exists(),
        "dirs of an unreadable record"
    );
    assert!(s.path.join(format!("{id}-init")).exists());
    std::fs::write(&rec, good).unwrap();
    std::fs::remove_file(s.path.join(".layerkit/containers/evil.json")).unwrap();
    run(s.lk("rm").arg("c"));
    assert!(!s.path.join(&id).exists());
}

/// A commit holds its container from start to end: an `rm` meanwhile is refused (it would pull
/// the upper from under the diff), and the commit completes with the container's changes.
#[test]
fn rm_waits_for_a_commit_in_progress() {
    if !need_root("overlay mounts of containers") {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("LAYERKIT_REQUIRE_ROOT").is_none(),
            "strace is needed (CI installs it)"
        );
        eprintln!("skipped: no strace");
        return;
    }
    let t = scratch();
    let root = t.path();
    let dir = root.join("tars");
    gen_layers(&dir, "=== a\nf a data=a\n");
    let s = Store::new(root.join("s"));
    let id = s.create("c", [dir.join("a.tar")]);
    std::fs::write(s.path.join(&id).join("diff/new"), "new").unwrap();
    // The commit, its writes slowed to 0.2 s each, so it is surely in progress below.
    let out = root.join("c.tar");
    let mut commit = Command::new("strace");
    commit
        .args(["-f", "-o", "/dev/null", "-e", "trace=write", "-e"])
        .arg("inject=write:delay_enter=200000")
        .arg(env!("CARGO_BIN_EXE_layerkit"))
        .args(["commit", "--store"])
        .arg(&s.path)
        .args(["c", "-o"])
        .arg(&out);
    let mut child = commit.spawn().unwrap();
    // Wait until the commit holds the container (its run's pins name it).
    let staging = s.path.join(".layerkit/staging");
    let held = || {
        std::fs::read_dir(&staging).unwrap().any(|e| {
            std::fs::read_to_string(e.unwrap().path().join("pins")).is_ok_and(|p| p.contains(&id))
        })
    };
    let t0 = std::time::Instant::now();
    while !held() {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the commit never held the container"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = refused(s.lk("rm").arg("c"), 1);
    assert!(err.contains("being committed"), "{err}");
    assert!(child.wait().unwrap().success(), "the commit completes");
    let names: Vec<String> = tar_members(&out).into_iter().map(|m| m.name).collect();
    assert!(names.iter().any(|n| n == "new"), "{names:?}");
    run(s.lk("rm").arg("c"));
}
