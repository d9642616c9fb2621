//! Edits of a users file (`users_file`) on behalf of the management API: the file is read as JSON,
//! changed in place (other users, other keys of the changed user and their order stay as written), and
//! written back atomically: a temporary file in the same directory with the old file's permissions,
//! then a rename over it, so a reader (a SIGHUP reload, a restart) sees the old or the new file, never
//! half of one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A users file's JSON, as read.
#[derive(Debug, Clone)]
pub struct UsersFile {
    path: PathBuf,
    users: Vec<Value>,
}

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file cannot be read or written.
    #[error("users file {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// No user of that name in the file.
    #[error("no user {0:?} in the users file")]
    NotInFile(String),
}

impl UsersFile {
    /// Reads `path`: a JSON array (a missing file is an empty one).
    pub fn read(path: &Path) -> Result<UsersFile, EditError> {
        let fail = |message: String| EditError::Io { path: path.to_path_buf(), message };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => "[]".into(),
            Err(error) => return Err(fail(error.to_string())),
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        match serde_json::from_str(text) {
            Ok(Value::Array(users)) => Ok(UsersFile { path: path.to_path_buf(), users }),
            Ok(_) => Err(fail("not a JSON array".into())),
            Err(error) => Err(fail(error.to_string())),
        }
    }

    /// The `password` written for `name`, if the file has that user.
    pub fn password(&self, name: &str) -> Option<&str> {
        self.position(name).and_then(|index| self.users[index].get("password")?.as_str())
    }

    /// Whether the file has a user named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// Appends a user.
    pub fn add(&mut self, name: &str, password: &str) {
        let mut user = Map::new();
        user.insert("name".into(), Value::from(name));
        user.insert("password".into(), Value::from(password));
        self.users.push(Value::Object(user));
    }

    /// Sets `name`'s password, keeping the user's other keys.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), EditError> {
        let index = self.position(name).ok_or_else(|| EditError::NotInFile(name.into()))?;
        if let Some(user) = self.users[index].as_object_mut() {
            user.insert("password".into(), Value::from(password));
        }
        Ok(())
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), EditError> {
        let index = self.position(name).ok_or_else(|| EditError::NotInFile(name.into()))?;
        self.users.remove(index);
        Ok(())
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn write(&self) -> Result<(), EditError> {
        let fail = |message: String| EditError::Io { path: self.path.clone(), message };
        let mut text = serde_json::to_string_pretty(&self.users).map_err(|error| fail(error.to_string()))?;
        text.push('\n');
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".users-")
            .tempfile_in(dir)
            .map_err(|error| fail(format!("cannot create a temporary file beside it: {error}")))?;
        // The new file gets the old one's permissions (passwords: often 0600), not the temporary's.
        if let Ok(meta) = std::fs::metadata(&self.path) {
            let _ = temp.as_file().set_permissions(meta.permissions());
        }
        temp.write_all(text.as_bytes())
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|error| fail(error.to_string()))?;
        temp.persist(&self.path).map_err(|error| fail(error.error.to_string()))?;
        Ok(())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.users.iter().position(|user| {
            user.get("name").and_then(Value::as_str).is_some_and(|written| written.trim() == name)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn edits_keep_the_rest_of_the_file_and_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(
            &path,
            r#"[{"name":"alice","password":"a","quota":{"bytes":"1 GiB","period":"day"}}]"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut file = UsersFile::read(&path).unwrap();
        file.add("bob", "b");
        file.set_password("alice", "a2").unwrap();
        file.write().unwrap();
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            written,
            serde_json::json!([
                {"name": "alice", "password": "a2", "quota": {"bytes": "1 GiB", "period": "day"}},
                {"name": "bob", "password": "b"}
            ])
        );
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut file = UsersFile::read(&path).unwrap();
        file.remove("alice").unwrap();
        assert!(matches!(file.remove("carol"), Err(EditError::NotInFile(_))));
        assert_eq!((file.has("alice"), file.password("bob")), (false, Some("b")));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn a_file_that_is_not_an_array_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, r#"{"name":"alice"}"#).unwrap();
        assert!(UsersFile::read(&path).unwrap_err().to_string().contains("not a JSON array"));
        std::fs::write(&path, "[").unwrap();
        assert!(UsersFile::read(&path).is_err());
        assert_eq!(UsersFile::read(&dir.path().join("missing.json")).unwrap().users.len(), 0);
    }
}
