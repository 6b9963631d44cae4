//! Image references in skopeo's transport syntax, which users already type
//! (`../shared/research/cli-contract-2.md`, "Image references"). A prefix is needed to mean an
//! image: anything else is a layer file, never guessed to be an image.

use std::path::PathBuf;

/// Where an image is and which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:REF]`: an OCI image layout directory; REF matches the
    /// `org.opencontainers.image.ref.name` annotation of an index entry.
    Oci {
        /// The layout directory.
        dir: PathBuf,
        /// The ref name, if given.
        name: Option<String>,
    },
    /// `oci-archive:FILE[:REF]`: a tar of an OCI image layout.
    OciArchive {
        /// The archive.
        file: PathBuf,
        /// The ref name, if given.
        name: Option<String>,
    },
    /// `docker-archive:FILE[:NAME:TAG]`: what `docker save` / `podman save` write.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// `NAME:TAG` as in `RepoTags`, if given.
        tag: Option<String>,
    },
}

impl ImageRef {
    /// Parse an argument; `None` when it has no image transport prefix (a layer file).
    pub fn parse(arg: &str) -> Option<ImageRef> {
        if let Some(rest) = arg.strip_prefix("oci:") {
            let (dir, name) = split_ref(rest);
            return Some(ImageRef::Oci { dir, name });
        }
        if let Some(rest) = arg.strip_prefix("oci-archive:") {
            let (file, name) = split_ref(rest);
            return Some(ImageRef::OciArchive { file, name });
        }
        if let Some(rest) = arg.strip_prefix("docker-archive:") {
            // FILE[:NAME:TAG]: the tag holds one colon (NAME may hold a registry port, so the
            // file ends at the first colon that leaves NAME:TAG with a colon in it).
            return Some(match rest.find(':') {
                Some(i) if rest[i + 1..].contains(':') => ImageRef::DockerArchive {
                    file: PathBuf::from(&rest[..i]),
                    tag: Some(rest[i + 1..].to_string()),
                },
                _ => ImageRef::DockerArchive {
                    file: PathBuf::from(rest),
                    tag: None,
                },
            });
        }
        None
    }

    /// Where an image written to this reference goes (`latest` when no REF is given).
    pub fn target(&self) -> super::ImageTarget {
        use super::ImageTarget;
        match self.clone() {
            ImageRef::Oci { dir, name } => ImageTarget::Layout {
                dir,
                name: name.unwrap_or_else(|| "latest".into()),
            },
            ImageRef::OciArchive { file, name } => ImageTarget::OciArchive {
                file,
                name: name.unwrap_or_else(|| "latest".into()),
            },
            ImageRef::DockerArchive { file, tag } => ImageTarget::DockerArchive { file, tag },
        }
    }

    /// The same reference with an absolute path (what a store records, to find the image again
    /// from any working directory).
    pub fn absolute(&self) -> ImageRef {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        match self {
            ImageRef::Oci { dir, name } => ImageRef::Oci {
                dir: abs(dir),
                name: name.clone(),
            },
            ImageRef::OciArchive { file, name } => ImageRef::OciArchive {
                file: abs(file),
                name: name.clone(),
            },
            ImageRef::DockerArchive { file, tag } => ImageRef::DockerArchive {
                file: abs(file),
                tag: tag.clone(),
            },
        }
    }

    /// The reference as the user wrote it (for messages).
    pub fn label(&self) -> String {
        match self {
            ImageRef::Oci { dir, name } => with_ref("oci", dir, name.as_deref()),
            ImageRef::OciArchive { file, name } => with_ref("oci-archive", file, name.as_deref()),
            ImageRef::DockerArchive { file, tag } => {
                with_ref("docker-archive", file, tag.as_deref())
            }
        }
    }
}

fn with_ref(t: &str, p: &std::path::Path, r: Option<&str>) -> String {
    match r {
        Some(r) => format!("{t}:{}:{r}", p.display()),
        None => format!("{t}:{}", p.display()),
    }
}

/// `PATH[:REF]`, as skopeo splits it: at the first colon (a path holding a colon cannot be named).
fn split_ref(s: &str) -> (PathBuf, Option<String>) {
    match s.split_once(':') {
        Some((p, r)) if !r.is_empty() => (PathBuf::from(p), Some(r.to_string())),
        Some((p, _)) => (PathBuf::from(p), None),
        None => (PathBuf::from(s), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_and_refs() {
        let p = |s: &str| ImageRef::parse(s);
        assert_eq!(p("layer.tar"), None);
        assert_eq!(p("./oci:x"), None);
        assert_eq!(
            p("oci:/srv/img"),
            Some(ImageRef::Oci {
                dir: "/srv/img".into(),
                name: None
            })
        );
        assert_eq!(
            p("oci:img:latest"),
            Some(ImageRef::Oci {
                dir: "img".into(),
                name: Some("latest".into())
            })
        );
        assert_eq!(
            p("oci-archive:a.tar:v1"),
            Some(ImageRef::OciArchive {
                file: "a.tar".into(),
                name: Some("v1".into())
            })
        );
        assert_eq!(
            p("docker-archive:save.tar"),
            Some(ImageRef::DockerArchive {
                file: "save.tar".into(),
                tag: None
            })
        );
        assert_eq!(
            p("docker-archive:save.tar:busybox:1.36"),
            Some(ImageRef::DockerArchive {
                file: "save.tar".into(),
                tag: Some("busybox:1.36".into())
            })
        );
        assert_eq!(
            p("docker-archive:save.tar:localhost:5000/app:v2"),
            Some(ImageRef::DockerArchive {
                file: "save.tar".into(),
                tag: Some("localhost:5000/app:v2".into())
            })
        );
        assert_eq!(p("oci:img:latest").unwrap().label(), "oci:img:latest");
    }
}
