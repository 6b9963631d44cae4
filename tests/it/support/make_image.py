#!/usr/bin/env python3
"""Write an OCI image layout (or its pieces) by hand, independently of layerkit, from layer tars.

usage: make_image.py OUT SPEC_JSON

SPEC: {
  "layers": [{"file": PATH, "compress": "none"|"gzip"|"zstd", "alg": "sha256"|"sha512"}],
  "docker": false,            # Docker schema2 media types (manifest, config, layers) instead of OCI
  "platforms": null,          # or [["linux","amd64"], ["linux","arm64","v8"]]: a nested index with
                              #   one manifest per platform (same layers, config says the platform)
  "refs": ["t"],              # index.json entries, each naming the image (or the nested index)
  "docker_archive": null,     # or PATH: also write the image as a classic `docker save` tar there
                              #   (manifest.json, <config hex>.json, <i>/layer.tar holding each
                              #   blob's bytes as they are, compressed or not; tag lk/classic:v1)
  "tamper": {}                # one of: {"blob_bytes": i}, {"blob_size": i}, {"diff_id": i},
                              #   {"extra_diff_id": true}, {"missing_blob": i}, {"schema1": true},
                              #   {"layer_media": [i, "type"]}
}
Prints nothing; the layout is complete and, unless tampered, valid for skopeo and umoci.
"""
import gzip, hashlib, io, json, os, subprocess, sys, tarfile

out = sys.argv[1]
spec = json.loads(sys.argv[2])
tamper = spec.get("tamper", {})
docker = spec.get("docker", False)
os.makedirs(out, exist_ok=True)


def put(data, alg="sha256"):
    d = hashlib.new(alg, data).hexdigest()
    os.makedirs(os.path.join(out, "blobs", alg), exist_ok=True)
    with open(os.path.join(out, "blobs", alg, d), "wb") as f:
        f.write(data)
    return alg + ":" + d, len(data)


M_MAN = "application/vnd.docker.distribution.manifest.v2+json" if docker else "application/vnd.oci.image.manifest.v1+json"
M_IDX = "application/vnd.docker.distribution.manifest.list.v2+json" if docker else "application/vnd.oci.image.index.v1+json"
M_CFG = "application/vnd.docker.container.image.v1+json" if docker else "application/vnd.oci.image.config.v1+json"


def layer_media(c):
    if docker:
        return {"none": "application/vnd.docker.image.rootfs.diff.tar",
                "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd"}[c]
    return {"none": "application/vnd.oci.image.layer.v1.tar",
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}[c]


layers, diff_ids = [], []
for i, l in enumerate(spec["layers"]):
    raw = open(l["file"], "rb").read()
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    c = l.get("compress", "none")
    if c == "gzip":
        data = gzip.compress(raw, mtime=0)
    elif c == "zstd":
        data = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    else:
        data = raw
    alg = l.get("alg", "sha256")
    digest, size = put(data, alg)
    if tamper.get("blob_bytes") == i:
        # Same name and size, other bytes: one byte of file content flipped (the tar stays valid
        # when the layer is uncompressed and the byte is past the first header).
        b = bytearray(data)
        b[512 + 3] ^= 0x20
        with open(os.path.join(out, "blobs", alg, digest.split(":")[1]), "wb") as f:
            f.write(bytes(b))
    if tamper.get("missing_blob") == i:
        os.remove(os.path.join(out, "blobs", alg, digest.split(":")[1]))
    media = layer_media(c)
    if tamper.get("layer_media", [None])[0] == i:
        media = tamper["layer_media"][1]
    layers.append({"mediaType": media, "digest": digest,
                   "size": size + (1 if tamper.get("blob_size") == i else 0)})
if "diff_id" in tamper:
    diff_ids[tamper["diff_id"]] = "sha256:" + hashlib.sha256(b"not this layer").hexdigest()
if tamper.get("extra_diff_id"):
    diff_ids.append("sha256:" + hashlib.sha256(b"one more").hexdigest())


def manifest(os_, arch, variant=None):
    cfg = {"architecture": arch, "os": os_, "config": {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids},
           "history": [{"created_by": "layer %d" % i} for i in range(len(layers))]}
    if variant:
        cfg["variant"] = variant
    cd, cs = put(json.dumps(cfg, sort_keys=True).encode())
    m = {"schemaVersion": 2, "mediaType": M_MAN,
         "config": {"mediaType": M_CFG, "digest": cd, "size": cs}, "layers": layers}
    md, ms = put(json.dumps(m).encode())
    manifest.last = (cd, m)
    return {"mediaType": M_MAN, "digest": md, "size": ms}


if spec.get("platforms"):
    entries = []
    for p in spec["platforms"]:
        d = manifest(*p)
        plat = {"os": p[0], "architecture": p[1]}
        if len(p) > 2:
            plat["variant"] = p[2]
        entries.append(dict(d, platform=plat))
    idx = {"schemaVersion": 2, "mediaType": M_IDX, "manifests": entries}
    xd, xs = put(json.dumps(idx).encode())
    top = {"mediaType": M_IDX, "digest": xd, "size": xs}
else:
    top = manifest("linux", "amd64")
if tamper.get("schema1"):
    top["mediaType"] = "application/vnd.docker.distribution.manifest.v1+prettyjws"
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [
        dict(top, annotations={"org.opencontainers.image.ref.name": r}) for r in spec.get("refs", ["t"])]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')

if spec.get("docker_archive"):
    cd, m = manifest.last
    blob = lambda d: open(os.path.join(out, "blobs", *d.split(":")), "rb").read()
    members = [("%s.json" % cd.split(":")[1], blob(cd))]
    members += [("%d/layer.tar" % i, blob(l["digest"])) for i, l in enumerate(m["layers"])]
    saved = [{"Config": members[0][0], "RepoTags": ["lk/classic:v1"],
              "Layers": [n for n, _ in members[1:]]}]
    members.insert(0, ("manifest.json", json.dumps(saved).encode()))
    with tarfile.open(spec["docker_archive"], "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
