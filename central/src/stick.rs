//! The provisioning stick image `centralctl token create --stick` writes (spec/store-os.md): a
//! FAT filesystem labelled `BACKROOM`, [`IMAGE_BYTES`] long, holding `provision.toml` at its
//! root, made in pure Rust (`fatfs`), so that no mkfs or mount is needed on the operator's
//! machine. It is written beside its final name and renamed into place, mode 0600: it holds a
//! token.
//!
//! It does not write the image onto a device: the operator does, with `dd`.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use backroom_session::provision::{FILE_NAME, Provision, STICK_LABEL};

/// The image's size: any USB stick holds it, and it stays far below the spec's 16 MiB.
pub const IMAGE_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StickError {
    #[error("cannot write the stick image {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists and is not a regular file: give the name of an image file, then dd it onto the stick", path.display())]
    NotAFile { path: PathBuf },
}

/// Writes the image for `provision` to `path` (replacing an image file already there).
pub fn write(path: &Path, provision: &Provision) -> Result<(), StickError> {
    if let Ok(m) = std::fs::metadata(path)
        && !m.is_file()
    {
        return Err(StickError::NotAFile { path: path.to_path_buf() });
    }
    let fail = |source| StickError::Write { path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let made = make(&tmp, provision).and_then(|()| backroom_daemon::fs::install(&tmp, path));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

fn make(tmp: &Path, provision: &Provision) -> std::io::Result<()> {
    let mut file =
        OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(tmp)?;
    file.set_len(IMAGE_BYTES)?;
    let mut label = [b' '; 11];
    label[..STICK_LABEL.len()].copy_from_slice(STICK_LABEL.as_bytes());
    fatfs::format_volume(&mut file, fatfs::FormatVolumeOptions::new().volume_label(label))?;
    file.seek(SeekFrom::Start(0))?;
    {
        let fs =
            fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new().time_provider(&UTC_NOW))?;
        {
            let mut f = fs.root_dir().create_file(FILE_NAME)?;
            f.truncate()?;
            f.write_all(provision.to_toml().as_bytes())?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    file.sync_all()
}

/// File times on the stick in UTC (FAT keeps no zone), instead of fatfs's 1980-01-01.
#[derive(Debug)]
struct UtcNow;

static UTC_NOW: UtcNow = UtcNow;

impl fatfs::TimeProvider for UtcNow {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let t = time::OffsetDateTime::now_utc();
        // FAT dates run from 1980 to 2107.
        let year = u16::try_from(t.year()).unwrap_or(1980).clamp(1980, 2107);
        fatfs::DateTime {
            date: fatfs::Date { year, month: u8::from(t.month()).into(), day: t.day().into() },
            time: fatfs::Time {
                hour: t.hour().into(),
                min: t.minute().into(),
                sec: t.second().into(),
                millis: t.millisecond(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use backroom_session::token::EnrollToken;

    use super::*;

    #[test]
    fn the_image_holds_the_file_under_the_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stick.img");
        let p = Provision {
            central: vec!["https://central.example:7443".into()],
            token: EnrollToken::generate("store-0042", &"ab".repeat(32)),
            insecure_registries: vec!["10.0.2.2:5055".into()],
            registry_ca: Default::default(),
        };
        write(&path, &p).unwrap();
        write(&path, &p).unwrap(); // again, over the first
        let mut file = std::fs::File::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap().len(), IMAGE_BYTES);
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), STICK_LABEL);
        let mut text = String::new();
        fs.root_dir().open_file(FILE_NAME).unwrap().read_to_string(&mut text).unwrap();
        let back = backroom_session::provision::parse(Path::new(FILE_NAME), &text).unwrap();
        assert_eq!(back, p);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["stick.img"], "no temporary left");
    }

    #[test]
    fn a_device_is_not_written() {
        let p = Provision {
            central: vec!["https://c".into()],
            token: EnrollToken::generate("s", &"ab".repeat(32)),
            insecure_registries: vec![],
            registry_ca: Default::default(),
        };
        let e = write(Path::new("/dev/null"), &p).unwrap_err();
        assert!(matches!(e, StickError::NotAFile { .. }), "{e}");
    }
}
