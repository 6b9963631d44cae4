#!/usr/bin/env python3
"""Wrap uncompressed layer tars (bottom first) in a minimal OCI image layout, tag "t".

usage: oci_image.py DIR LAYER.tar...     then: umoci raw unpack --image DIR:t ROOTFS
Lets a peer implementation (umoci) apply layerkit's layers, as a registry client would.
"""
import hashlib, json, os, sys

out, tars = sys.argv[1], sys.argv[2:]
os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)


def blob(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}


layers = [blob(open(t, "rb").read()) for t in tars]
cfg = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode())
man = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **l} for l in layers]}).encode())
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
                                                   "annotations": {"org.opencontainers.image.ref.name": "t"}}]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
