//! Differential test of layerkit's tar reader against Python's `tarfile` on archives of every dialect
//! (PAX, GNU long names, ustar prefix, base-256 numbers, devices) plus hostile ones. For each archive
//! our listing must equal Python's, or, for the cases where lax readers disagree, be a refusal.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use layerkit::tar::Reader;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Cases where Python reads *something* but readers disagree (tar-rs, Go, GNU differ): refusing is
/// the safe answer for a layer applier.
const STRICTER: &[&str] = &["pax_malformed", "lone_zero_block"];

fn ours(tar: &Path) -> Result<Value, String> {
    let f = std::fs::File::open(tar).unwrap();
    let mut r = Reader::new(f, tar.display().to_string());
    let mut rows = Vec::new();
    while let Some(e) = r.next_entry().map_err(|e| e.to_string())? {
        let mut data = Vec::new();
        if e.typeflag == b'0' {
            r.data().read_to_end(&mut data).map_err(|e| e.to_string())?;
        }
        let xattrs: Map<String, Value> = e
            .xattrs
            .iter()
            .map(|(k, v)| (hex::encode(k), Value::String(hex::encode(v))))
            .collect();
        rows.push(json!({
            // Python drops a directory name's trailing '/'.
            "path": hex::encode(e.path.strip_suffix(b"/").unwrap_or(&e.path)), "link": hex::encode(&e.linkname),
            "type": String::from_utf8(vec![e.typeflag]).unwrap(), "size": e.size, "mode": e.mode,
            "uid": e.uid, "gid": e.gid, "mtime": e.mtime, "devmajor": e.devmajor, "devminor": e.devminor,
            "xattrs": xattrs, "sha256": hex::encode(Sha256::digest(&data)),
        }));
    }
    Ok(Value::Array(rows))
}

#[test]
fn reader_agrees_with_python_tarfile() {
    let dir = tempfile::tempdir().unwrap();
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/gen_tars.py");
    let st = Command::new("python3")
        .arg(&gen)
        .arg(dir.path())
        .status()
        .expect("python3");
    assert!(st.success());
    let mut checked = 0;
    for ent in std::fs::read_dir(dir.path()).unwrap() {
        let p = ent.unwrap().path();
        if p.extension().is_none_or(|e| e != "tar") {
            continue;
        }
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        let theirs = std::fs::read_to_string(p.with_extension("json")).ok();
        match (theirs, ours(&p)) {
            (Some(t), Ok(o)) => {
                let t: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(o, t, "{name}: listing differs from Python's");
            }
            (Some(_), Err(e)) => {
                assert!(
                    STRICTER.contains(&name.as_str()),
                    "{name}: Python reads it, we refused: {e}"
                );
                assert!(e.contains("malformed tar"), "{name}: {e}");
            }
            (None, Ok(o)) => panic!("{name}: Python refused it, we read {o}"),
            (None, Err(_)) => {}
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} archives checked");
}

/// What `layerdiff` writes, read back by our reader, equals what Python reads (writer and reader are
/// both ours, so Python is the referee).
#[test]
fn our_writer_output_reads_the_same_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(upper.join("a").join("b".repeat(120))).unwrap();
    std::fs::write(
        upper.join("a").join("b".repeat(120)).join("c".repeat(150)),
        b"deep",
    )
    .unwrap();
    std::fs::write(upper.join("f"), vec![7u8; 70_000]).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), upper.join("s")).unwrap();
    std::fs::hard_link(upper.join("f"), upper.join("h")).unwrap();
    let out = dir.path().join("o.tar");
    let st = Command::new(env!("CARGO_BIN_EXE_layerdiff"))
        .arg(&upper)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let script = r#"
import hashlib, json, sys, tarfile
rows = []
with tarfile.open(sys.argv[1], encoding="utf-8", errors="surrogateescape") as tf:
    for m in tf:
        h = lambda s: s.encode("utf-8", "surrogateescape").hex()
        data = tf.extractfile(m).read() if m.isreg() else b""
        rows.append({"path": h(m.name), "link": h(m.linkname), "type": m.type.decode(), "size": m.size,
                     "sha256": hashlib.sha256(data).hexdigest()})
print(json.dumps(rows))
"#;
    let py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let theirs: Value = serde_json::from_slice(&py.stdout).unwrap();
    let mine = ours(&out).unwrap();
    let keep = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"path": r["path"], "link": r["link"], "type": r["type"], "size": r["size"], "sha256": r["sha256"]}))
            .collect()
    };
    assert_eq!(keep(&mine), keep(&theirs));
    assert_eq!(
        theirs.as_array().unwrap().len(),
        6,
        "a/, a/b.., a/b../c.., f, h, s"
    );
}
