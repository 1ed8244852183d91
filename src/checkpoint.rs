//! Checkpoint folders written atomically: a reader (or a crash) sees the old folder or the
//! new one, never half of one. What goes inside is [`crate::model_dir`]'s contract.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Creates or replaces the folder `dest` with what `write` puts into the empty folder it is
/// given, so that `dest` is always either the old or the new complete folder.
///
/// `write` fills a fresh folder `.NAME.tmp-<pid>` next to `dest` (same parent, hence the same
/// file system, so renames are atomic). Its files are flushed to disk, then the old `dest` is
/// renamed to `.NAME.old-<pid>`, the new folder renamed to `dest`, and the old one deleted. If
/// `write` fails or panics, the temp folder is removed and `dest` is untouched. A crash in the
/// instant between the two renames leaves no `dest` but the complete old checkpoint in
/// `.NAME.old-<pid>`. Temp names are per process, so one destination must have one writer
/// at a time within a process.
pub fn write_atomic<F>(dest: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let name = dest
        .file_name()
        .with_context(|| format!("expected a checkpoint folder path, got {}", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dest.exists() && !dest.is_dir() {
        bail!(
            "expected a checkpoint folder at {}, found a file",
            dest.display()
        );
    }
    fs::create_dir_all(&parent).with_context(|| format!("creating folder {}", parent.display()))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    // Left over only by a crashed earlier run that had the same pid; never a live writer.
    remove_if_present(&tmp)?;
    remove_if_present(&old)?;
    fs::create_dir(&tmp).with_context(|| format!("creating temp folder {}", tmp.display()))?;
    let guard = RemoveOnDrop(Some(tmp.clone()));

    write(&tmp).with_context(|| format!("writing checkpoint {}", dest.display()))?;
    sync_folder(&tmp).with_context(|| format!("flushing checkpoint {}", tmp.display()))?;

    let had_old = dest.exists();
    if had_old {
        fs::rename(dest, &old).with_context(|| {
            format!(
                "moving old checkpoint {} aside to {}",
                dest.display(),
                old.display()
            )
        })?;
    }
    if let Err(err) = fs::rename(&tmp, dest) {
        if had_old {
            // Put the old checkpoint back so a failed swap changes nothing.
            let _ = fs::rename(&old, dest);
        }
        return Err(err).with_context(|| {
            format!(
                "renaming {} to checkpoint {}",
                tmp.display(),
                dest.display()
            )
        });
    }
    std::mem::forget(guard);
    if let Ok(dir) = fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    if had_old {
        fs::remove_dir_all(&old)
            .with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(())
}

/// Tidies what a process killed inside [`write_atomic`] left beside `dest`:
/// if `dest` is gone but its complete old version waits in `.NAME.old-PID`
/// (killed between the two renames), that is put back; half-written
/// `.NAME.tmp-PID` folders and leftover old ones are removed. Returns whether
/// anything was found.
pub fn recover_atomic(dest: &Path) -> Result<bool> {
    let (Some(name), Some(parent)) = (dest.file_name(), dest.parent()) else {
        return Ok(false);
    };
    let name = name.to_string_lossy();
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(false);
    };
    let mut found = false;
    for entry in entries {
        let path = entry?.path();
        let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        let old = file.starts_with(&format!(".{name}.old-"));
        if !(old || file.starts_with(&format!(".{name}.tmp-"))) {
            continue;
        }
        found = true;
        if old && !dest.exists() {
            fs::rename(&path, dest).with_context(|| {
                format!(
                    "restoring checkpoint {} from {}",
                    dest.display(),
                    path.display()
                )
            })?;
        } else {
            remove_if_present(&path)?;
        }
    }
    Ok(found)
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Flushes the folder's files and the folder itself, so the rename that publishes it cannot
/// land on disk before its content does.
fn sync_folder(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_folder(&path)?;
        } else {
            fs::File::open(&path)?.sync_all()?;
        }
    }
    // Directories cannot be opened for syncing on every platform; the files are what matter.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
