//! Writing rendered stacks under the phase's state folder.

use std::path::{Path, PathBuf};

use super::model::{StackError, Stacks};

/// Write `<dir>/stacks/base.json` and `<dir>/stacks/compute.json`, where
/// `dir` is the phase's state folder (`plan.state_dir()`, i.e.
/// `.infra/<phase>`). Each file is replaced atomically. Returns the paths.
pub fn write(dir: &Path, stacks: &Stacks) -> Result<Vec<PathBuf>, StackError> {
    let out = dir.join("stacks");
    std::fs::create_dir_all(&out).map_err(|source| StackError::Write {
        path: out.clone(),
        source,
    })?;
    let mut written = Vec::new();
    for (file, stack) in [
        ("base.json", &stacks.base),
        ("compute.json", &stacks.compute),
    ] {
        let path = out.join(file);
        let tmp = out.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, &stack.body).map_err(|source| StackError::Write {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| StackError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}
