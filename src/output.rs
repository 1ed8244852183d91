//! Where results land: a file written beside its destination and renamed into
//! place at the end (an error midway leaves the old file as it was), never
//! onto an input, and folders checked before a command replaces or fills them.
//! No command deletes or truncates anything it did not create.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// True when `a` and `b` name the same file (same device and inode), through
/// links and `./` spellings alike. False when either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => same_identity(&x, &y),
        _ => false,
    }
}

#[cfg(unix)]
fn same_identity(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_identity(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    false
}

/// Refuses to write `output` when it is one of `inputs` (by device and inode).
pub fn refuse_overwriting_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if same_file(output, input) {
            bail!(
                "refusing to write {} over the input {} (the same file): write to another path, \
                 then rename it",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// A file written under a temporary name in the destination's folder and
/// renamed over the destination by [`AtomicFile::commit`]; dropped without a
/// commit, the temporary file is removed and the destination is untouched.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<fs::File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        if dest.is_dir() {
            bail!("cannot write {}: it is a folder", dest.display());
        }
        let name = dest
            .file_name()
            .with_context(|| format!("cannot write {}: not a file name", dest.display()))?
            .to_string_lossy()
            .into_owned();
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = fs::File::create(&tmp)
            .with_context(|| format!("cannot write {} (at {})", dest.display(), tmp.display()))?;
        Ok(Self {
            dest: dest.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::new(file)),
        })
    }

    /// Flushes the data to disk and renames the file to its destination.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("committed once");
        let file = file
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.dest.display()))?;
        file.sync_all()
            .with_context(|| format!("flushing {}", self.dest.display()))?;
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// What a folder a command is about to write holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderState {
    /// Absent or empty: free to write.
    Free,
    /// Holds only entries this command writes (a previous result).
    Own,
    /// Holds these entries (sorted names) that the command did not write.
    Foreign(Vec<String>),
}

/// Sorts the entries of `dir` into the command's own (`own(name, is_dir)`)
/// and foreign ones. Hidden temporary folders of an interrupted atomic write
/// (`.NAME.tmp-PID`, `.NAME.old-PID`) count as the command's own.
pub fn folder_state(dir: &Path, own: impl Fn(&str, bool) -> bool) -> Result<FolderState> {
    if !dir.exists() {
        return Ok(FolderState::Free);
    }
    if !dir.is_dir() {
        bail!("{} is a file, not a folder", dir.display());
    }
    let mut foreign = Vec::new();
    let mut any = false;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        any = true;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type()?.is_dir();
        let leftover = name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-"));
        if !(leftover || own(&name, is_dir)) {
            foreign.push(if is_dir { format!("{name}/") } else { name });
        }
    }
    foreign.sort();
    Ok(match (any, foreign.is_empty()) {
        (false, _) => FolderState::Free,
        (true, true) => FolderState::Own,
        (true, false) => FolderState::Foreign(foreign),
    })
}

/// The error for a folder holding files a command did not write.
pub fn foreign_files_error(dir: &Path, what: &str, foreign: &[String]) -> anyhow::Error {
    let shown: Vec<&str> = foreign.iter().take(8).map(String::as_str).collect();
    anyhow::anyhow!(
        "{} already holds files that are not {what}: {}{}; choose another folder, or pass --force \
         to write there anyway",
        dir.display(),
        shown.join(", "),
        if foreign.len() > shown.len() {
            format!(" and {} more", foreign.len() - shown.len())
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_leaves_the_old_file_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.txt");
        fs::write(&dest, "old").unwrap();
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"new").unwrap();
            // Dropped without a commit, as on an error.
        }
        assert_eq!(fs::read_to_string(&dest).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    }

    #[test]
    fn same_file_sees_through_spellings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        fs::write(&a, "x").unwrap();
        let dotted = dir.path().join(".").join("a.txt");
        assert!(same_file(&a, &dotted));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.txt");
            std::os::unix::fs::symlink(&a, &link).unwrap();
            assert!(same_file(&a, &link));
            let hard = dir.path().join("hard.txt");
            fs::hard_link(&a, &hard).unwrap();
            assert!(same_file(&hard, &a));
        }
        assert!(!same_file(&a, &dir.path().join("missing")));
    }

    #[test]
    fn folder_state_sorts_own_and_foreign_entries() {
        let dir = tempfile::tempdir().unwrap();
        let own = |n: &str, _: bool| n == "config.json";
        assert_eq!(
            folder_state(&dir.path().join("none"), own).unwrap(),
            FolderState::Free
        );
        assert_eq!(folder_state(dir.path(), own).unwrap(), FolderState::Free);
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(folder_state(dir.path(), own).unwrap(), FolderState::Own);
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("precious.txt"), "x").unwrap();
        assert_eq!(
            folder_state(dir.path(), own).unwrap(),
            FolderState::Foreign(vec!["precious.txt".into(), "sub/".into()])
        );
    }
}
