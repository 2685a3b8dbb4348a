//! Where a plan comes from: its file, the project folder around it, and how
//! to check the files it names.

use std::path::{Path, PathBuf};

/// Where the plan came from and how to check the files it names.
pub struct Source<'a> {
    pub file: &'a Path,
    pub name_key: &'a str,
    pub root: &'a Path,
    pub plan_dir: &'a Path,
    pub file_exists: &'a dyn Fn(&Path) -> bool,
}

/// `p` relative to `root` when it lies under it, for messages.
pub(crate) fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// The project folder and the plan folder of a plan file: a plan in
/// `plans/` belongs to the folder holding `plans/`, any other to its own
/// folder.
pub fn default_root_for(file: &Path) -> (PathBuf, PathBuf) {
    let plan_dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let plan_dir = if plan_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        plan_dir
    };
    let root = if plan_dir.file_name().is_some_and(|n| n == "plans") {
        plan_dir
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        plan_dir.clone()
    };
    (root, plan_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_in_plans_belongs_to_the_folder_above() {
        let (root, dir) = default_root_for(Path::new("/x/proj/plans/p.json"));
        assert_eq!(root, PathBuf::from("/x/proj"));
        assert_eq!(dir, PathBuf::from("/x/proj/plans"));
        let (root, dir) = default_root_for(Path::new("plans/p.json"));
        assert_eq!((root, dir), (PathBuf::from("."), PathBuf::from("plans")));
        let (root, dir) = default_root_for(Path::new("p.json"));
        assert_eq!((root, dir), (PathBuf::from("."), PathBuf::from(".")));
        let (root, dir) = default_root_for(Path::new("/x/other/p.json"));
        assert_eq!(root, PathBuf::from("/x/other"));
        assert_eq!(dir, PathBuf::from("/x/other"));
    }

    #[test]
    fn rel_strips_the_root_only_when_it_is_a_prefix() {
        let root = Path::new("/x/proj");
        assert_eq!(rel(Path::new("/x/proj/results/p"), root), "results/p");
        assert_eq!(rel(Path::new("/elsewhere/r"), root), "/elsewhere/r");
    }
}
