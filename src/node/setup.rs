//! `infra node setup`: run the bundle's `setup.sh` once per hash (again when
//! it changes), one at a time on a node: the setup of an `infra apply` that
//! died goes on running, and the next one waits for it instead of running
//! beside it (package managers' locks, clones). Its log goes to
//! `<dest>/<instance id>.log`; on failure its tail goes to stderr.

use std::path::Path;

use super::fsio::{self, write_fail};
use super::spec::SetupSpec;
use super::upload::{join_key, parse_dest, S3};
use super::{bundle, spot, Fail, EXIT_USAGE};

pub async fn setup(root: &Path, s: SetupSpec) -> Result<i32, Fail> {
    let (bucket, prefix) = parse_dest(&s.dest).ok_or_else(|| {
        Fail::new(
            EXIT_USAGE,
            format!("bad --spec: dest {:?} is not s3://bucket/prefix", s.dest),
        )
    })?;
    fsio::mkdirs(root)?;
    let _lock = fsio::lock(&root.join("setup.lock"))?;
    let marker = root.join("setup.done");
    if std::fs::read_to_string(&marker).is_ok_and(|h| h.trim() == s.hash) {
        println!("infra-node: setup {} already done", s.hash);
        return Ok(0);
    }
    let s3 = S3::default();
    bundle::ensure(root, s.bundle.as_ref(), &s3).await?;
    let dir = root.join("setup");
    fsio::mkdirs(&dir)?;
    let log = root.join("setup.log");
    let out = std::fs::File::create(&log).map_err(|e| write_fail(&log, &e))?;
    let err = out.try_clone().map_err(|e| write_fail(&log, &e))?;
    let script = root.join("bundle/setup.sh");
    let mut c = std::process::Command::new(fsio::shell());
    c.arg("-e")
        .arg(&script)
        .current_dir(&dir)
        // the bundle's scripts, as the steps see them (`$INFRA_SCRIPTS`)
        .env("INFRA_SCRIPTS", root.join("bundle/scripts"))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let code = match c.status() {
        Ok(st) => st.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
        }),
        Err(e) => {
            eprintln!("infra-node: cannot start {}: {e}", script.display());
            1
        }
    };
    let key = join_key(&prefix, &format!("{}.log", spot::instance_id(root).await));
    if let Err(e) = s3.put_file(&bucket, &key, &log).await {
        eprintln!("infra-node: cannot upload the setup log to {}: {e}", s.dest);
    }
    if code == 0 {
        fsio::write_atomic(&marker, format!("{}\n", s.hash).as_bytes())?;
    } else {
        let text = std::fs::read(&log).unwrap_or_default();
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        let lines = if lines.last().is_some_and(|l| l.is_empty()) {
            &lines[..lines.len() - 1]
        } else {
            &lines[..]
        };
        let tail = &lines[lines.len().saturating_sub(20)..];
        for l in tail {
            eprintln!("{}", String::from_utf8_lossy(l));
        }
    }
    Ok(code)
}
